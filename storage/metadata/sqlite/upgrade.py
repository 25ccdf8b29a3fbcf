"""Versioned schema upgrades of a SQLite metadata file (`storage.layout.UPGRADES`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from storage.layout import SCHEMA_VERSION, UPGRADES


class UpgradeRefused(Exception):
    """The database cannot be brought to the wanted version; the message says why."""


def upgrade_sqlite(
    database: Path,
    upgrades: Mapping[int, Sequence[str]] = UPGRADES,
    target: int = SCHEMA_VERSION,
) -> tuple[int | None, int | None]:
    """Apply the upgrades from the file's recorded version up to `target`, each version in one
    transaction (a failing statement leaves the file at the version before it); (version
    before, version after). A file without a schema yet is left to `open` to create."""
    connection = sqlite3.connect(database, isolation_level=None, timeout=30)
    try:
        connection.execute("BEGIN IMMEDIATE")
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        row = (
            connection.execute("SELECT version FROM schema_version").fetchone()
            if "schema_version" in tables
            else None
        )
        connection.execute("ROLLBACK")
        if row is None:
            return None, None
        before = current = int(row[0])
        if current > target:
            raise UpgradeRefused(
                f"{database} has schema version {current}, newer than this Trustyard's {target}"
            )
        for version in range(current + 1, target + 1):
            connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in upgrades[version]:
                    connection.execute(statement)
                connection.execute("UPDATE schema_version SET version = ?", (version,))
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            current = version
        return before, current
    finally:
        connection.close()
