"""Checks of what an operator hands the `trustyard` command, before anything starts.

Each failure is an `OperatorError`: one line that names the thing (a file, a directory, an
address) and says how to fix it; the command prints it and exits non-zero, never a traceback.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import ssl
import tempfile
from pathlib import Path

from storage.layout import SCHEMA_VERSION, DataLayout
from storage.metadata import DATABASE_ERRORS, MetadataUnreachable, is_postgresql
from storage.metadata.postgresql import redact, schema_version_at
from storage.metadata.sqlite import schema_version_of


class OperatorError(Exception):
    """A mistake in how the command was started; the message is the one line to print."""


def check_serve_data_dir(data_dir: Path, metadata_url: str | None = None) -> bool:
    """The data directory `serve` writes to: created when missing (returns True then);
    refused when it is a file or cannot be written. The metadata database is checked too: the
    SQLite file in it, or the PostgreSQL database at `metadata_url`."""
    created = False
    if data_dir.exists() and not data_dir.is_dir():
        raise OperatorError(
            f"data directory {data_dir} is a file, not a directory: "
            "give --data-dir (data_dir) a directory, or move the file away"
        )
    if not data_dir.exists():
        try:
            data_dir.mkdir(parents=True)
        except OSError as exc:
            raise OperatorError(
                f"cannot create data directory {data_dir}: {exc.strerror}: create it, writable "
                f"by {_who()}, or choose another --data-dir"
            ) from None
        created = True
    _check_writable(data_dir)
    if is_postgresql(metadata_url):
        assert metadata_url is not None
        check_postgresql(metadata_url, existing=False)
    else:
        check_database(DataLayout(data_dir).database)
    return created


def _check_writable(data_dir: Path) -> None:
    """Refuse a data directory (or a subdirectory Trustyard writes to) this user cannot write."""
    try:
        fd, probe = tempfile.mkstemp(dir=data_dir, prefix=".trustyard-write-check-")
    except OSError as exc:
        raise OperatorError(
            f"data directory {data_dir} is not writable by {_who()} ({exc.strerror}): "
            f"chown or chmod it, or choose another --data-dir"
        ) from None
    os.close(fd)
    os.unlink(probe)
    for entry in sorted(data_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not os.access(entry, os.W_OK | os.X_OK):
            raise OperatorError(
                f"{entry} is not writable by {_who()}: chown -R the data directory "
                f"{data_dir} to that user"
            )
        if entry.is_file() and not os.access(entry, os.R_OK | os.W_OK):
            raise OperatorError(
                f"{entry} is not readable and writable by {_who()}: chown -R the data "
                f"directory {data_dir} to that user"
            )


def check_existing_data_dir(data_dir: Path, metadata_url: str | None = None) -> None:
    """The data directory of an offline command (gc, decisions, policy explain, library,
    backup): it must exist and hold a database (the SQLite file, or the PostgreSQL database at
    `metadata_url`), or the command would work on an empty one."""
    if not data_dir.exists():
        raise OperatorError(
            f"data directory {data_dir} does not exist: give the registry's --data-dir "
            "(or data_dir in --config)"
        )
    if not data_dir.is_dir():
        raise OperatorError(f"data directory {data_dir} is a file, not a directory")
    if is_postgresql(metadata_url):
        assert metadata_url is not None
        check_postgresql(metadata_url, existing=True)
        return
    database = DataLayout(data_dir).database
    if not database.is_file():
        raise OperatorError(
            f"{data_dir} holds no Trustyard database ({database.name}): give the registry's "
            "--data-dir (or data_dir in --config)"
        )
    if not os.access(database, os.R_OK | os.W_OK) or not os.access(data_dir, os.W_OK):
        raise OperatorError(
            f"{database} is not readable and writable by {_who()}: run as the registry's user"
        )
    check_database(database)


def check_database(database: Path) -> None:
    """Refuse a database file SQLite cannot read, before the server or a command opens it
    (a damaged file would otherwise stop them half-way, with a connection thread left behind)."""
    if not database.exists():
        return
    try:
        version = schema_version_of(database)
    except DATABASE_ERRORS as exc:
        raise OperatorError(
            f"the metadata database {database} cannot be used ({exc}): is this a Trustyard "
            "data directory? Restore a damaged one with `trustyard restore`"
        ) from None
    if version is not None and version != SCHEMA_VERSION:
        raise OperatorError(
            f"the metadata database {database} has schema version {version}; this Trustyard "
            f"knows version {SCHEMA_VERSION}: run the Trustyard release that wrote it"
        )


def check_postgresql(url: str, *, existing: bool) -> None:
    """Refuse a PostgreSQL metadata database that cannot be reached, refuses us, or has another
    schema version (`existing`: one that holds no Trustyard schema yet), in one line."""
    try:
        version = asyncio.run(schema_version_at(url))
    except MetadataUnreachable as exc:
        raise OperatorError(f"the metadata database cannot be used: {exc}") from None
    if version is None and existing:
        raise OperatorError(
            f"the PostgreSQL database {redact(url)} holds no Trustyard schema: give the "
            "registry's metadata URL (or run `trustyard serve` once to create it)"
        )
    if version is not None and version != SCHEMA_VERSION:
        # An older schema is upgraded by `migrate`; a newer one no command of ours can read.
        remedy = (
            "run `trustyard migrate`"
            if version < SCHEMA_VERSION
            else "run the Trustyard release that wrote it"
        )
        raise OperatorError(
            f"the PostgreSQL database {redact(url)} has schema version {version}; this "
            f"Trustyard knows version {SCHEMA_VERSION}: {remedy}"
        )


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server TLS context (TLS 1.2 or newer) for a PEM certificate chain and its key."""
    for path, what, option in ((cert, "certificate", "--tls-cert"), (key, "key", "--tls-key")):
        try:
            head = path.read_bytes()
        except FileNotFoundError:
            raise OperatorError(f"TLS {what} file {path} does not exist (check {option})") from None
        except IsADirectoryError:
            raise OperatorError(f"TLS {what} file {path} is a directory (check {option})") from None
        except PermissionError:
            raise OperatorError(f"TLS {what} file {path} is not readable by {_who()}") from None
        if what == "certificate" and b"PRIVATE KEY-----" in head and b"CERTIFICATE" not in head:
            if b"CERTIFICATE-----" in _peek(key):
                raise OperatorError(
                    f"--tls-cert {cert} and --tls-key {key} are swapped: {cert} holds the "
                    f"private key and {key} the certificate"
                )
            raise OperatorError(f"TLS certificate file {cert} holds a private key, no certificate")
        if what == "certificate" and b"-----BEGIN CERTIFICATE-----" not in head:
            raise OperatorError(f"TLS certificate file {cert} holds no PEM certificate")
        if what == "key" and b"PRIVATE KEY-----" not in head:
            raise OperatorError(f"TLS key file {key} holds no PEM private key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise OperatorError(
                f"TLS key {key} does not belong to the certificate {cert}: give the key the "
                "certificate was issued for"
            ) from None
        raise OperatorError(f"cannot use TLS certificate {cert} with key {key}: {exc}") from None
    return context


def _peek(path: Path) -> bytes:
    try:
        return path.read_bytes()[:65536]
    except OSError:
        return b""


def listen_error(exc: OSError, host: str, port: int) -> OperatorError:
    """The one line for a socket that cannot listen on `host:port`."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return OperatorError(
            f"cannot listen on {where}: the port is already in use (another Trustyard or "
            "registry?): stop it or choose another --listen HOST:PORT"
        )
    if exc.errno == errno.EACCES:
        return OperatorError(
            f"cannot listen on {where}: permission denied (ports below 1024 need privileges): "
            "choose a port above 1023 with --listen"
        )
    return OperatorError(
        f"cannot listen on {where}: {exc.strerror or exc}: give an address of this machine "
        "with --listen (127.0.0.1:5000, 0.0.0.0:5000)"
    )


def is_loopback(host: str) -> bool:
    """Whether `host` (a listen address) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _who() -> str:
    uid = os.getuid()
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, ImportError):
        return f"uid {uid}"
