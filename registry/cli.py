"""The `trustyard` command: `serve` the registry, `gc` its storage."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from registry.app import create_app
from registry.config import Config, ConfigError, load_config
from registry.middleware import IN_FLIGHT
from storage.backends import open_blob_store
from storage.gc import collect_garbage
from storage.layout import DataLayout
from storage.metadata import MetadataDB

log = logging.getLogger("trustyard")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trustyard", description="Trustyard: a trusted OCI registry and policy gateway."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", type=Path, help="YAML configuration file")
        sub.add_argument("--data-dir", help="where blobs and the database live")

    serve = commands.add_parser("serve", help="run the registry")
    common(serve)
    serve.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:5000)")

    gc = commands.add_parser("gc", help="remove unreferenced manifests, blobs and stale uploads")
    common(gc)
    gc.add_argument("--dry-run", action="store_true", help="print what would go, remove nothing")
    gc.add_argument("--grace-period", help="keep blobs younger than this (e.g. 1h)")
    gc.add_argument("--keep-untagged", action="store_true", help="do not delete untagged manifests")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `trustyard` and `python -m registry`."""
    args = _parser().parse_args(argv)
    overrides: dict[str, object] = {"data_dir": args.data_dir}
    if args.command == "serve":
        overrides["listen"] = args.listen
    if args.command == "gc":
        gc_overrides: dict[str, object] = {}
        if args.grace_period:
            gc_overrides["grace_period"] = args.grace_period
        if args.keep_untagged:
            gc_overrides["delete_untagged"] = False
        overrides["gc"] = gc_overrides
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"trustyard: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "serve":
        return serve(config)
    return asyncio.run(run_gc(config, dry_run=args.dry_run))


def serve(config: Config) -> int:
    """Run the registry until SIGINT/SIGTERM; in-flight requests finish first."""
    try:
        import uvloop
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(config))
    log.info("Trustyard stopped")
    return 0


async def _serve(config: Config) -> None:
    """Serve until a stop signal, then shut down without cancelling in-flight requests.

    The listening socket closes first; requests in progress get `shutdown_timeout` to finish
    (aiohttp's own shutdown stops reading request bodies at once, which would cut uploads
    in flight short, so we wait for them before handing over to it); then cleanup closes the
    database.
    """
    app = create_app(config)
    access_log = logging.getLogger("trustyard.access") if config.access_log else None
    runner = web.AppRunner(app, access_log=access_log, shutdown_timeout=config.shutdown_timeout)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(
            runner, config.host, config.port, shutdown_timeout=config.shutdown_timeout
        )
        await site.start()
        log.info("Trustyard listening on http://%s:%d", config.host, config.port)
        await stop.wait()
        in_flight = app[IN_FLIGHT]
        log.info("stop signal: finishing %d requests in progress", in_flight.count)
        for running_site in list(runner.sites):
            await running_site.stop()
        if not await in_flight.drained(config.shutdown_timeout):
            log.warning("%d requests still running after the shutdown timeout", in_flight.count)
    finally:
        await runner.cleanup()


async def run_gc(config: Config, *, dry_run: bool) -> int:
    """Collect garbage once and print what went."""
    store = open_blob_store(config)
    db = await MetadataDB.open(DataLayout(config.data_dir).database)
    try:
        report = await collect_garbage(
            db,
            store,
            grace_period=config.gc_grace_period,
            stale_upload_age=config.stale_upload_age,
            delete_untagged=config.gc_delete_untagged,
            dry_run=dry_run,
        )
    finally:
        await db.close()
        await store.close()
    prefix = "would remove " if dry_run else "removed "
    for line in report.lines()[:-1]:
        print(prefix + line)
    print(("dry run: " if dry_run else "") + report.lines()[-1])
    return 0
