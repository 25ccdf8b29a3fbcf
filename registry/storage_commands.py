"""The storage commands of `trustyard`: `gc` (collect garbage) and `fsck` (check every blob).

Both take the data directory's collection lock, so two never run at once. `gc` releases the disk
reserve (`storage.reserve`) before it opens the database, so it runs on a full disk, and makes
the reserve again when done.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from registry.config import Config
from storage import reserve
from storage.backends import open_blob_store
from storage.errors import LockLost, StorageFull
from storage.fsck import check_blobs
from storage.gc import CollectionRunning, GCReport, collect_garbage
from storage.layout import DataLayout
from storage.metadata import GC_KEY, open_metadata

STORAGE_COMMANDS = frozenset({"gc", "fsck"})

#: Exit status of `gc` when another collection holds the lock, of `fsck` when blobs are damaged.
BUSY = 75
DAMAGED = 1


def add_storage_commands(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `gc` and `fsck` on the `trustyard` subcommand parser."""
    gc = commands.add_parser("gc", help="remove unreferenced manifests, blobs and stale uploads")
    common(gc)
    gc.add_argument("--dry-run", action="store_true", help="print what would go, remove nothing")
    gc.add_argument("--grace-period", help="keep what was pushed more recently (e.g. 1h)")
    gc.add_argument("--keep-untagged", action="store_true", help="do not delete untagged manifests")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    fsck = commands.add_parser("fsck", help="re-hash every blob; quarantine damaged ones")
    common(fsck)
    fsck.add_argument("--json", action="store_true", help="print the report as JSON")
    fsck.add_argument(
        "--no-quarantine", action="store_true", help="report damaged blobs, move nothing"
    )


def storage_overrides(args: argparse.Namespace) -> dict[str, object]:
    """Configuration overrides from the command's flags."""
    if args.command != "gc":
        return {}
    gc: dict[str, object] = {}
    if args.grace_period:
        gc["grace_period"] = args.grace_period
    if args.keep_untagged:
        gc["delete_untagged"] = False
    return {"gc": gc}


def run_storage_command(config: Config, args: argparse.Namespace) -> int:
    """Run `gc` or `fsck`; the process exit status."""
    layout = DataLayout(config.data_dir)
    if not layout.root.is_dir():
        print(f"trustyard: no data directory at {layout.root}", file=sys.stderr)
        return 2
    if args.command == "gc" and not args.dry_run:
        # Before anything is opened or written: on a full disk this is the room to work in.
        reserve.release(layout)
    try:
        with _collection_lock(layout):
            if args.command == "gc":
                return asyncio.run(_gc(config, dry_run=args.dry_run, as_json=args.json))
            return asyncio.run(_fsck(config, quarantine=not args.no_quarantine, as_json=args.json))
    except (BlockingIOError, CollectionRunning) as exc:
        # The data directory's lock, or the database's (a collection on another machine).
        where = "this metadata database" if isinstance(exc, CollectionRunning) else layout.root
        print(
            f"trustyard: another gc or fsck is running on {where}; try again later", file=sys.stderr
        )
        return BUSY
    except StorageFull as exc:
        print(f"trustyard: {exc.message}; free some space on {layout.root}", file=sys.stderr)
        return 1
    except LockLost as exc:
        print(f"trustyard: {exc.message}", file=sys.stderr)
        return BUSY
    finally:
        if args.command == "gc" and not args.dry_run:
            reserve.ensure(layout)


@contextlib.contextmanager
def _collection_lock(layout: DataLayout) -> Iterator[None]:
    with layout.gc_lock.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


async def _gc(config: Config, *, dry_run: bool, as_json: bool) -> int:
    store = open_blob_store(config.blob_store)
    db = await open_metadata(DataLayout(config.data_dir).database, config.metadata_url)
    show = sys.stderr.isatty()
    shown = False

    def progress(report: GCReport) -> None:
        nonlocal shown
        if show:
            shown = True
            print(
                f"\rgc: {len(report.manifests)} manifests, "
                f"{len(report.blobs) + len(report.orphan_files)} blobs removed so far",
                end="",
                file=sys.stderr,
                flush=True,
            )

    try:
        report = await collect_garbage(
            db,
            store,
            grace_period=config.gc_grace_period,
            stale_upload_age=config.stale_upload_age,
            delete_untagged=config.gc_delete_untagged,
            dry_run=dry_run,
            progress=progress,
        )
    finally:
        await db.close()
        await store.close()
    if shown:
        print(file=sys.stderr)  # end the progress line
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
        return 0
    prefix = "would remove " if dry_run else "removed "
    for line in report.lines()[:-1]:
        print(prefix + line)
    print(("dry run: " if dry_run else "") + report.lines()[-1])
    return 0


async def _fsck(config: Config, *, quarantine: bool, as_json: bool) -> int:
    store = open_blob_store(config.blob_store)
    db = await open_metadata(DataLayout(config.data_dir).database, config.metadata_url)
    show = sys.stderr.isatty()

    def progress(done: int, total: int, hashed: int) -> None:
        if show:
            print(
                f"\rfsck: {done}/{total} blobs, {hashed / 2**20:.1f} MiB hashed",
                end="",
                file=sys.stderr,
                flush=True,
            )

    try:
        # Never beside a collection on another machine: it moves the blobs fsck is reading.
        async with db.exclusive(GC_KEY, wait=False) as alone:
            if not alone:
                raise CollectionRunning()
            report = await check_blobs(db, store, quarantine=quarantine, progress=progress)
    finally:
        await db.close()
        await store.close()
    if show:
        print(file=sys.stderr)
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        for line in report.lines():
            print(line)
    return 0 if report.ok else DAMAGED
