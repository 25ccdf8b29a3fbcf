"""`trustyard backup DIR` and `trustyard restore DIR`: the command line of `storage.backup`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from registry.config import Config
from registry.preflight import OperatorError
from registry.progress import terminal_progress
from storage.backends import open_blob_store
from storage.backup import (
    BackupError,
    BackupSummary,
    backup,
    check_restore_target,
    restore,
    verify_backup,
)


def add_backup_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register `backup` and `restore` with the `trustyard` parser."""
    saving = commands.add_parser(
        "backup", help="copy the database (a consistent snapshot), then the blobs it names"
    )
    common(saving)
    saving.add_argument("folder", type=Path, help="a new (or empty) folder for the backup")
    saving.add_argument("--json", action="store_true", help="print the summary as JSON")
    restoring = commands.add_parser(
        "restore", help="check a backup whole, then restore it into a new data directory"
    )
    common(restoring)
    restoring.add_argument("folder", type=Path, help="a folder `trustyard backup` wrote")
    restoring.add_argument("--json", action="store_true", help="print the summary as JSON")


def run_backup_command(config: Config, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run `backup` or `restore`; the process exit code."""
    out = out or sys.stdout
    try:
        if args.command == "backup":
            summary = asyncio.run(_backup(config, args.folder))
            verb = f"backed up {config.data_dir} to {args.folder}"
        else:
            check_restore_target(config.data_dir)
            blobs = verify_backup(args.folder, terminal_progress("restore: checking blobs"))
            summary = asyncio.run(_restore(config, args.folder, blobs))
            verb = f"restored {args.folder} into {config.data_dir}"
    except BackupError as exc:
        raise OperatorError(str(exc)) from None
    if args.json:
        print(
            json.dumps(
                {
                    "blobs": summary.blobs,
                    "blob_bytes": summary.bytes,
                    "database_bytes": summary.database_bytes,
                }
            ),
            file=out,
        )
    else:
        print(
            f"{verb}: database {summary.database_bytes} bytes, {summary.blobs} blobs "
            f"({summary.bytes} bytes)",
            file=out,
        )
    return 0


async def _backup(config: Config, folder: Path) -> BackupSummary:
    store = open_blob_store(config.blob_store)
    try:
        return await backup(config.data_dir, store, folder, terminal_progress("backup: blobs"))
    finally:
        await store.close()


async def _restore(config: Config, folder: Path, blobs: list[tuple[str, int]]) -> BackupSummary:
    store = open_blob_store(config.blob_store)
    try:
        return await restore(
            folder, config.data_dir, store, terminal_progress("restore: blobs"), verified=blobs
        )
    finally:
        await store.close()
