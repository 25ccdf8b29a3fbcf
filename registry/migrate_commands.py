"""`trustyard migrate`: bring the metadata database's schema up to date, or move a registry's
metadata from its SQLite file into PostgreSQL (`--from <file> --to postgresql://...`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry.config import Config
from registry.preflight import OperatorError
from storage.layout import SCHEMA_VERSION, DataLayout
from storage.metadata import is_postgresql, open_metadata
from storage.metadata.postgresql import MetadataUrlInvalid, check_url, redact
from storage.metadata.postgresql.copy import CopyRefused, copy_sqlite_to_postgresql
from storage.metadata.postgresql.upgrade import upgrade_postgresql
from storage.metadata.sqlite.upgrade import UpgradeRefused, upgrade_sqlite


def add_migrate_command(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `migrate` on the `trustyard` subcommand parser."""
    migrate = commands.add_parser(
        "migrate",
        help="update the metadata schema, or copy a SQLite registry into PostgreSQL",
    )
    common(migrate)
    migrate.add_argument("--from", dest="source", type=Path, help="the SQLite metadata file")
    migrate.add_argument("--to", dest="target", help="the postgresql:// URL to copy it into")


def run_migrate_command(config: Config, args: argparse.Namespace) -> int:
    """Run `migrate`; the process exit status."""
    if (args.source is None) != (args.target is None):
        raise OperatorError("migrate: --from and --to go together")
    if args.source is not None:
        if not is_postgresql(args.target):
            raise OperatorError(f"migrate --to: expected a postgresql:// URL, got {args.target!r}")
        try:
            check_url(args.target)
        except MetadataUrlInvalid as exc:
            raise OperatorError(f"migrate --to {redact(args.target)}: {exc}") from None
        try:
            counts = asyncio.run(copy_sqlite_to_postgresql(args.source, args.target))
        except CopyRefused as exc:
            raise OperatorError(f"migrate: {exc}") from None
        for table, count in counts.items():
            print(f"{table}: {count} rows")
        print(
            f"copied {sum(counts.values())} rows from {args.source} to {redact(args.target)}: "
            f"set metadata: to that URL",
            file=sys.stderr,
        )
        return 0
    where = (
        redact(config.metadata_url)
        if config.metadata_url
        else str(DataLayout(config.data_dir).database)
    )
    database = DataLayout(config.data_dir).database
    try:
        if config.metadata_url:
            before, _ = asyncio.run(upgrade_postgresql(config.metadata_url))
        else:
            before, _ = upgrade_sqlite(database) if database.exists() else (None, None)
    except UpgradeRefused as exc:
        raise OperatorError(f"migrate: {exc}") from None
    asyncio.run(_open_and_close(config))
    if before is None:
        print(f"{where}: schema version {SCHEMA_VERSION} (created)")
    elif before == SCHEMA_VERSION:
        print(f"{where}: schema version {SCHEMA_VERSION} (up to date)")
    else:
        print(f"{where}: schema version {SCHEMA_VERSION} (upgraded from {before})")
    return 0


async def _open_and_close(config: Config) -> None:
    # Opening creates what is missing and applies the schema's pending changes.
    db = await open_metadata(DataLayout(config.data_dir).database, config.metadata_url)
    await db.close()
