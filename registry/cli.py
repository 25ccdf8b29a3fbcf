"""The `trustyard` command: `serve` the registry, `gc` and `fsck` its storage, manage `user`s and
`robot`s.

An operator's mistake (a port in use, a missing TLS file, a data directory that is a file or not
writable, a typo in the configuration) ends the command with one line naming the thing and the
fix, and a non-zero exit: never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import ssl
import sys
from importlib import metadata
from pathlib import Path

from aiohttp import web

from policies.engine import Policy
from policies.gateway import startup_policy
from policies.loader import PolicyError
from registry.app import create_app
from registry.auth.settings import AuthSettings
from registry.auth.tokens import load_or_create_key
from registry.auth.users import PasswordRefused, UsersFileError, UserStore, check_password
from registry.backup_commands import add_backup_commands, run_backup_command
from registry.config import Config, ConfigError, load_config
from registry.context import CONTEXT
from registry.heap import count_pauses, freeze_startup_heap
from registry.library_commands import LIBRARY_COMMANDS, add_library_commands, run_library_command
from registry.logs import ACCESS_LOGGER, AccessLogger, configure_logging
from registry.middleware import IN_FLIGHT
from registry.migrate_commands import add_migrate_command, run_migrate_command
from registry.policy_commands import POLICY_COMMANDS, add_policy_commands, run_policy_command
from registry.preflight import (
    OperatorError,
    check_existing_data_dir,
    check_serve_data_dir,
    is_loopback,
    listen_error,
)
from registry.preflight import tls_context as _tls_context
from registry.storage_commands import (
    STORAGE_COMMANDS,
    add_storage_commands,
    run_storage_command,
    storage_overrides,
)
from registry.workers import Supervisor, WorkerRole, bind_slots
from storage.errors import StorageUnavailable
from storage.metadata import DATABASE_ERRORS, MetadataUnreachable

log = logging.getLogger("trustyard")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trustyard", description="Trustyard: a trusted OCI registry and policy gateway."
    )
    parser.add_argument("--version", action="version", version=f"trustyard {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", type=Path, help="YAML configuration file")
        sub.add_argument("--data-dir", help="where blobs and the database live")

    serve = commands.add_parser("serve", help="run the registry")
    common(serve)
    serve.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:5000)")
    serve.add_argument("--policy", help="the policy file to enforce (see docs/policy.md)")
    serve.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate chain")
    serve.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port (default 1; e.g. one per CPU core)",
    )

    add_storage_commands(commands, common)

    for kind in ("user", "robot"):
        accounts = commands.add_parser(kind, help=f"manage {kind}s in the users file")
        actions = accounts.add_subparsers(dest="action", required=True)
        add = actions.add_parser("add", help=f"add a {kind}")
        common(add)
        add.add_argument("name")
        add.add_argument("--group", action="append", default=[], help="a group (repeatable)")
        add.add_argument("--replace", action="store_true", help="replace an existing entry")
        if kind == "user":
            add.add_argument(
                "--password-stdin", action="store_true", help="read the password from stdin"
            )
        remove = actions.add_parser("remove", help=f"remove a {kind}")
        common(remove)
        remove.add_argument("name")
    add_policy_commands(commands, common)
    add_library_commands(commands, common)
    add_backup_commands(commands, common)
    add_migrate_command(commands, common)
    return parser


def _version() -> str:
    try:
        return metadata.version("trustyard")
    except metadata.PackageNotFoundError:
        return "(not installed)"


#: Commands that read an existing data directory and must not create an empty one.
OFFLINE_COMMANDS = ("gc", "fsck", "decisions", "library", "backup")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `trustyard` and `python -m registry`."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except OperatorError as exc:
        print(f"trustyard: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"trustyard: {exc.filename or ''}: permission denied for {_uid()}", file=sys.stderr)
        return 2
    except StorageUnavailable as exc:
        detail = exc.detail if isinstance(exc.detail, dict) else {}
        reason = detail.get("reason") or detail.get("error") or ""
        print(
            f"trustyard: the blob store is unavailable ({reason or exc.message}): check "
            "storage.s3 (endpoint_url, bucket, credentials) and that the store is up",
            file=sys.stderr,
        )
        return 2
    except MetadataUnreachable as exc:
        print(f"trustyard: the metadata database cannot be used: {exc}", file=sys.stderr)
        return 2
    except DATABASE_ERRORS as exc:
        print(
            f"trustyard: the metadata database cannot be used ({exc}): is --data-dir a "
            "Trustyard data directory? Restore a damaged one with `trustyard restore`",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130


def _uid() -> str:
    import os

    return f"uid {os.getuid()}"


def _run(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {"data_dir": args.data_dir}
    if args.command == "serve":
        overrides["listen"] = args.listen
        if args.policy:
            overrides["policy"] = {"file": args.policy}
        if bool(args.tls_cert) != bool(args.tls_key):
            print("trustyard: --tls-cert and --tls-key go together", file=sys.stderr)
            return 2
        if args.tls_cert:
            overrides["tls"] = {"cert": args.tls_cert, "key": args.tls_key}
        if args.workers is not None:
            overrides["workers"] = args.workers
    overrides.update(storage_overrides(args))
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"trustyard: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    if args.command == "gc":
        # gc prints every line of its report: its log lines would only repeat them.
        logging.getLogger("storage.gc").setLevel(logging.WARNING)
    needs_data = args.command in OFFLINE_COMMANDS or (
        # `policy explain --action` shares the `action` attribute: anything but check.
        args.command == "policy" and args.action != "check"
    )
    if needs_data:
        check_existing_data_dir(config.data_dir, config.metadata_url)
    if args.command in POLICY_COMMANDS:
        return run_policy_command(config, args)
    if args.command in LIBRARY_COMMANDS:
        return run_library_command(config, args)
    if args.command == "backup" or args.command == "restore":
        return run_backup_command(config, args)
    if args.command == "serve":
        return start_server(config)
    if args.command in ("user", "robot"):
        return manage_accounts(config, args)
    if args.command in STORAGE_COMMANDS:
        return run_storage_command(config, args)
    if args.command == "migrate":
        return run_migrate_command(config, args)
    raise AssertionError(f"unhandled command {args.command}")


def start_server(config: Config) -> int:
    """`trustyard serve`: check what the operator gave, then serve until stopped."""
    ssl_context = tls_context(config)
    # Refuse to start on an invalid policy with its problems, not a traceback.
    try:
        policy = startup_policy(config.policy_file)
    except PolicyError as exc:
        print(f"trustyard: invalid policy, not starting:\n{exc}", file=sys.stderr)
        return 2
    _check_auth_files(config)
    if config.workers > 1:
        slots = bind_slots(
            lambda port: bind(config.host, port, reuse_port=True), config.port, config.workers
        )
    else:
        slots = [bind(config.host, config.port)]
    try:
        if check_serve_data_dir(config.data_dir, config.metadata_url):
            log.warning("created the data directory %s (it did not exist)", config.data_dir)
    except OperatorError:
        for sock in slots:
            sock.close()
        raise
    # The bound port: with `--listen HOST:0` the system chose it, and the warning names it.
    _warn_about_exposure(config, slots[0].getsockname()[1])
    if config.workers == 1:
        return serve(config, policy, sock=slots[0], ssl_context=ssl_context)
    scheme = "https" if ssl_context else "http"
    port = slots[0].getsockname()[1]

    def run_worker(sock: socket.socket, role: WorkerRole) -> int:
        return serve(config, policy, sock=sock, ssl_context=ssl_context, worker=role)

    supervisor = Supervisor(
        slots,
        run_worker,
        start_timeout=config.worker_start_timeout,
        # Each worker has shutdown_timeout for its requests in progress, then closes its stores.
        stop_timeout=config.shutdown_timeout + 30,
        on_ready=lambda: log.info(
            "Trustyard listening on %s://%s:%d with %d workers",
            scheme,
            config.host,
            port,
            config.workers,
        ),
    )
    code = supervisor.run()
    log.info("Trustyard stopped" if code == 0 else "Trustyard stopped: a worker failed")
    return code


def _check_auth_files(config: Config) -> None:
    """A configured token signing key or users file that cannot be used stops start-up."""
    if not config.auth_enabled:
        return
    settings = AuthSettings.from_config(config)
    if settings.signing_key_configured and not settings.signing_key.is_file():
        raise OperatorError(
            f"token signing key {settings.signing_key} does not exist (auth.token.signing_key): "
            "create an EC P-256 key there (openssl ecparam -name prime256v1 -genkey -noout | "
            "openssl pkcs8 -topk8 -nocrypt) or remove the setting to have one generated"
        )
    if settings.signing_key.exists():
        try:
            load_or_create_key(settings.signing_key, configured=True)
        except (ValueError, OSError) as exc:
            raise OperatorError(
                f"token signing key {settings.signing_key} is not a usable EC P-256 private key "
                f"({str(exc).split('. ')[0]}): replace it with one in PEM form, or remove "
                "auth.token.signing_key to have one generated"
            ) from None
    try:
        UserStore(settings.users_file).accounts()
    except UsersFileError as exc:
        raise OperatorError(f"{exc} (auth.users_file)") from None


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on `host:port`, or the one line saying why there is none
    (`reuse_port`: others of this user may listen on the same port, for `serve --workers`)."""
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OperatorError(
            f"cannot listen on {host}:{port}: {host!r} is not an address of this machine "
            f"({exc.strerror}): use e.g. --listen 127.0.0.1:{port} or 0.0.0.0:{port}"
        ) from None
    # IPv4 first: `localhost` then means 127.0.0.1, as clients name it.
    family, kind, proto, _, address = sorted(found, key=lambda a: a[0] != socket.AF_INET)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            # Linux lets only sockets of the same user share the port this way.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host in ("::", "[::]"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise listen_error(exc, host, port) from None
    sock.setblocking(False)
    return sock


#: Said at start-up when anyone who reaches the port may push, pull and delete.
OPEN_REGISTRY_WARNING = (
    "OPEN REGISTRY: listening on %s:%d beyond this machine WITHOUT AUTHENTICATION: anyone who "
    "can reach the port may push, pull and delete. Add an auth: section (README: Authentication "
    "and TLS) or listen on 127.0.0.1"
)
#: Said when the token realm would otherwise come from what clients send.
NO_PUBLIC_URL_WARNING = (
    "listening on %s:%d beyond this machine without public_url or auth.realm: token challenges "
    "name http(s)://127.0.0.1:%d/token, which other machines cannot reach; set public_url "
    "(e.g. https://registry.example.com)"
)


def _warn_about_exposure(config: Config, port: int) -> None:
    if is_loopback(config.host):
        return
    if not config.auth_enabled:
        log.warning(OPEN_REGISTRY_WARNING, config.host, port)
    elif not config.public_url and not AuthSettings.from_config(config).realm:
        log.warning(NO_PUBLIC_URL_WARNING, config.host, port, port)


def manage_accounts(config: Config, args: argparse.Namespace) -> int:
    """`trustyard user|robot add|remove NAME`: edit the users file (a running server re-reads it).

    A robot's token is printed once, on stdout, and only its hash is kept.
    """
    settings = AuthSettings.from_config(config)
    if not settings.users_file.parent.exists() and not config.data_dir.exists():
        # Adding the first account may come before the first `serve`: like serve, create the
        # data directory, and say so (a typo in --data-dir shows at once). Removing needs one.
        if args.action == "remove":
            raise OperatorError(
                f"data directory {config.data_dir} does not exist: give the registry's "
                "--data-dir (or data_dir in --config)"
            )
        check_serve_data_dir(config.data_dir)
        print(f"created the data directory {config.data_dir} (it did not exist)", file=sys.stderr)
    store = UserStore(settings.users_file)
    try:
        if args.action == "remove":
            if not store.remove(args.name):
                print(f"trustyard: no user or robot {args.name!r}", file=sys.stderr)
                return 1
            print(f"removed {args.name}", file=sys.stderr)
        elif args.command == "robot":
            token = store.add_robot(args.name, args.group, replace=args.replace)
            print(f"robot {args.name} added; its token (shown only now):", file=sys.stderr)
            print(token)
        else:
            password = _read_password(from_stdin=args.password_stdin)
            store.add_user(args.name, password, args.group, replace=args.replace)
            print(f"user {args.name} added to {store.path}", file=sys.stderr)
    except PasswordRefused as exc:
        print(f"trustyard: {exc}", file=sys.stderr)
        return 2
    except UsersFileError as exc:
        print(f"trustyard: {exc}", file=sys.stderr)
        return 1
    return 0


def _read_password(*, from_stdin: bool) -> str:
    """The new password, from stdin or asked twice on the terminal; `PasswordRefused` when the
    two differ or it is too weak (one message, said once)."""
    if from_stdin or not sys.stdin.isatty():
        return check_password(sys.stdin.readline().rstrip("\r\n"))
    import getpass

    first = getpass.getpass("password: ")
    check_password(first)
    if first != getpass.getpass("again: "):
        raise PasswordRefused("the two passwords differ; nothing was changed")
    return first


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server TLS context for `tls.cert`/`tls.key` (TLS 1.2 or newer), or None;
    `OperatorError` naming the file when they cannot be used."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    return _tls_context(config.tls_cert, config.tls_key)


def serve(
    config: Config,
    policy: Policy | None = None,
    *,
    sock: socket.socket | None = None,
    ssl_context: ssl.SSLContext | None = None,
    worker: WorkerRole | None = None,
) -> int:
    """Run the registry until SIGINT/SIGTERM; in-flight requests finish first (`policy`: the
    one `config` names, already loaded; else it is loaded at start; `sock`: a socket already
    listening, else one is opened on `config.listen`; `worker`: this process is one of
    `serve --workers`)."""
    # The default asyncio loop, not uvloop: uvloop has no loop.sendfile, so aiohttp would copy
    # every blob through Python (measured here: 1.4 GB/s against 1.9 GB/s with sendfile).
    if ssl_context is None:
        ssl_context = tls_context(config)
    if sock is None:
        sock = bind(config.host, config.port)
    asyncio.run(_serve(config, policy, sock, ssl_context, worker))
    log.info("Trustyard stopped" if worker is None else f"worker {worker.index} stopped")
    return 0


async def _serve(
    config: Config,
    policy: Policy | None,
    sock: socket.socket,
    ssl_context: ssl.SSLContext | None,
    worker: WorkerRole | None = None,
) -> None:
    """Serve until a stop signal, then shut down without cancelling in-flight requests.

    The listening socket closes first; requests in progress get `shutdown_timeout` to finish
    (aiohttp's own shutdown stops reading request bodies at once, which would cut uploads
    in flight short, so we wait for them before handing over to it); then cleanup closes the
    database.
    """
    app = create_app(config, policy, worker)
    access_log = logging.getLogger(ACCESS_LOGGER) if config.access_log else None
    # keepalive_timeout also bounds the wait for a request's headers from the moment a
    # connection opens or a response ends: a client trickling header bytes is cut off.
    runner = web.AppRunner(
        app,
        access_log=access_log,
        access_log_class=AccessLogger,
        shutdown_timeout=config.shutdown_timeout,
        keepalive_timeout=config.idle_timeout,
    )
    await runner.setup()
    # Start-up's objects live as long as the process: out of the cycle collector's way, so that
    # its full collections stop holding up the requests in flight (registry/heap.py).
    frozen = freeze_startup_heap()
    count_pauses()
    log.debug("froze %d objects of start-up out of the cycle collector", frozen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP reloads the policy file (an invalid one is refused; the last good one stays).
    loop.add_signal_handler(signal.SIGHUP, lambda: app[CONTEXT].policy.reload())
    try:
        site = web.SockSite(
            runner, sock, shutdown_timeout=config.shutdown_timeout, ssl_context=ssl_context
        )
        await site.start()
        scheme = "https" if ssl_context else "http"
        # The bound port, not the configured one: `--listen 127.0.0.1:0` lets the system choose.
        port = sock.getsockname()[1]
        if worker is None:
            log.info("Trustyard listening on %s://%s:%d", scheme, config.host, port)
        else:
            log.info("worker %d listening on %s://%s:%d", worker.index, scheme, config.host, port)

            # The parent says "listening" once every worker is; it stops us when it dies.
            def parent_gone(fd: int = worker.lifeline_fd) -> None:
                loop.remove_reader(fd)  # end-of-file stays readable: once is enough
                log.warning("worker %d: the supervising process is gone: stopping", worker.index)
                stop.set()

            loop.add_reader(worker.lifeline_fd, parent_gone)
            worker.report_ready()
        await stop.wait()
        in_flight = app[IN_FLIGHT]
        log.info("stop signal: finishing %d requests in progress", in_flight.count)
        for running_site in list(runner.sites):
            await running_site.stop()
        if not await in_flight.drained(config.shutdown_timeout):
            log.warning("%d requests still running after the shutdown timeout", in_flight.count)
    finally:
        await runner.cleanup()
