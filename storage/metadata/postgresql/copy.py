"""Moving a registry's metadata from its SQLite file into PostgreSQL, without losing a row.

`copy_sqlite_to_postgresql` reads every table of the SQLite file inside one read transaction
(one consistent state, even if a server still writes to it; stop it first so nothing written
after the copy is left behind), writes them with PostgreSQL's binary COPY in batches (bounded
memory: manifests are up to 4 MiB each) inside one transaction of the target, and commits only
when the row count of every table in the target equals the source's. The target must hold no
Trustyard rows yet: a copy never merges into or overwrites a registry.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from storage.layout import SCHEMA, SCHEMA_VERSION
from storage.metadata.postgresql.connection import PostgreSQLBase, redact

#: Rows per COPY batch: at most this many manifests (4 MiB each at most) are held at once.
BATCH = 64
#: Tables in the schema's order (a table comes after those its foreign keys name); not the
#: heartbeats of the processes serving the source (`replica_files`: they say what runs now).
TABLES = [
    t
    for t in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA)
    if t not in ("schema_version", "replica_files")
]


class CopyRefused(Exception):
    """The copy cannot start or did not match; the message says why, in one line."""


async def copy_sqlite_to_postgresql(source: Path, url: str) -> dict[str, int]:
    """Copy every row of the SQLite metadata file `source` into the (empty) PostgreSQL database
    at `url`; the number of rows per table, equal on both sides."""
    if not source.is_file():
        raise CopyRefused(f"{source} is not a Trustyard metadata database file")
    reader = await asyncio.to_thread(_open_source, source)
    try:
        target = await PostgreSQLBase.open(url)
        try:
            return await _copy(reader, target)
        finally:
            await target.close()
    finally:
        await asyncio.to_thread(reader.close)


def _open_source(source: Path) -> sqlite3.Connection:
    try:
        reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True, check_same_thread=False)
        reader.execute("BEGIN")  # one read snapshot for every table
        version = reader.execute("SELECT version FROM schema_version").fetchone()
    except sqlite3.DatabaseError as exc:
        raise CopyRefused(f"{source} cannot be read as a Trustyard database ({exc})") from None
    if version is None or version[0] != SCHEMA_VERSION:
        reader.close()
        raise CopyRefused(
            f"{source} has schema version {version and version[0]}; this Trustyard copies "
            f"version {SCHEMA_VERSION}"
        )
    return reader


async def _copy(reader: sqlite3.Connection, target: PostgreSQLBase) -> dict[str, int]:
    counts: dict[str, int] = {}
    async with target.transaction() as db:
        connection = db.connection
        for table in TABLES:
            if await connection.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
                raise CopyRefused(
                    f"the PostgreSQL database {redact(target.url)} already holds Trustyard rows "
                    f"({table}): copy into an empty database"
                )
        for table in TABLES:
            counts[table] = await _copy_table(reader, connection, table)
        for table in TABLES:
            copied = await connection.fetchval(f"SELECT count(*) FROM {table}")
            if copied != counts[table]:
                raise CopyRefused(f"{table}: {counts[table]} rows read, {copied} written")
            for column in ("id", "rowid"):
                if await _has_identity(connection, table, column):
                    # The next id continues after the copied ones.
                    await connection.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                        f"(SELECT COALESCE(max({column}), 0) + 1 FROM {table}), false)"
                    )
    return counts


async def _has_identity(connection: asyncpg.Connection, table: str, column: str) -> bool:
    return bool(
        await connection.fetchval(
            "SELECT pg_get_serial_sequence($1, $2) IS NOT NULL "
            "FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = $1 AND column_name = $2",
            table,
            column,
        )
    )


async def _copy_table(
    reader: sqlite3.Connection, connection: asyncpg.Connection, table: str
) -> int:
    columns = [row[1] for row in await asyncio.to_thread(_columns, reader, table)]
    types = dict(
        await connection.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = $1",
            table,
        )
    )
    if "rowid" in types and "rowid" not in columns:
        columns.append("rowid")  # SQLite's implicit one: the order findings and proofs keep
    convert = [_converter(types[c]) for c in columns]
    cursor = await asyncio.to_thread(reader.execute, f"SELECT {', '.join(columns)} FROM {table}")
    total = 0
    while rows := await asyncio.to_thread(cursor.fetchmany, BATCH):
        records = [tuple(f(v) for f, v in zip(convert, row, strict=True)) for row in rows]
        await connection.copy_records_to_table(table, records=records, columns=columns)
        total += len(records)
    return total


def _columns(reader: sqlite3.Connection, table: str) -> list[Any]:
    return reader.execute(f"PRAGMA table_info({table})").fetchall()


def _converter(data_type: str) -> Any:
    """SQLite's dynamic values into the target column's type (binary COPY is strict)."""

    def keep(value: Any) -> Any:
        return value

    def to(kind: Any) -> Any:
        return lambda value: None if value is None else kind(value)

    return {
        "bigint": to(int),
        "double precision": to(float),
        "bytea": to(bytes),
        "text": to(str),
    }.get(data_type, keep)


__all__ = ["BATCH", "TABLES", "CopyRefused", "copy_sqlite_to_postgresql"]
