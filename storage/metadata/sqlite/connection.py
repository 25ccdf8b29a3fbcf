"""SQLite connections and transactions: what every group of the SQLite backend runs its SQL on.

Reads go through one connection and writes through another, serialised by a lock, so a reader
never sees half a write and a write transaction never has a stranger's statement slipped into
it. WAL mode lets the garbage collector (another process) and the server use the database at
once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import aiosqlite

from storage.errors import StorageFull
from storage.layout import MIGRATIONS, SCHEMA, SCHEMA_VERSION
from storage.metadata.outbox import OutboxRow

#: SQLite's primary result code for "database or disk is full".
_SQLITE_FULL = 13

#: One row of parameters, by position (`?`) or by name (`:name`).
Params = Sequence[Any] | Mapping[str, Any]


class SQLiteBase:
    """The two connections of one SQLite metadata database, and its transactions."""

    def __init__(
        self, reader: aiosqlite.Connection, writer: aiosqlite.Connection, path: Path | None = None
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._write_lock = asyncio.Lock()
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> Self:
        """Open (creating if needed, migrating older columns) the database at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path)
        await writer.executescript(SCHEMA)
        async with writer.execute("SELECT version FROM schema_version") as cursor:
            row = await cursor.fetchone()
        if row is None:
            await writer.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise RuntimeError(
                f"{path}: schema version {row[0]}, this Trustyard knows {SCHEMA_VERSION}"
            )
        for table, column, statements in MIGRATIONS:
            async with writer.execute(f"PRAGMA table_info({table})") as cursor:
                columns = {info[1] for info in await cursor.fetchall()}
            if column not in columns:
                for statement in statements:
                    await writer.execute(statement)
        reader = await _connect(path)
        return cls(reader, writer, path)

    async def close(self) -> None:
        """Close both connections (checkpointing the WAL)."""
        async with self._write_lock:
            await self._writer.close()
        await self._reader.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction (`BEGIN IMMEDIATE`), serialised with every other write of this
        process: committed when the block ends, rolled back when it raises. SQLite's "disk
        full" becomes `StorageFull`."""
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                try:
                    yield self._writer
                except BaseException:
                    if self._writer.in_transaction:
                        await self._writer.execute("ROLLBACK")
                    raise
                await self._writer.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_FULL:
                    if self._writer.in_transaction:
                        await self._writer.execute("ROLLBACK")
                    raise StorageFull("disk (metadata database)") from exc
                raise

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[aiosqlite.Connection]:
        """A private connection inside one read transaction: a consistent view that never
        blocks a writer, where TEMP tables may be written (a dry run's simulation)."""
        assert self.path is not None
        connection = await _connect(self.path)
        try:
            await connection.execute("BEGIN")
            yield connection
            await connection.execute("ROLLBACK")
        finally:
            await connection.close()

    async def read(self, sql: str, args: Params = ()) -> list[Any]:
        """Rows of a read-only query on the reader connection (for this backend's own code and
        for tests that look inside the SQLite file)."""
        return await self._all(sql, args)

    async def ping(self) -> None:
        """Raise unless the database answers a query."""
        await self._all("SELECT 1")

    async def _one(self, sql: str, args: Params = ()) -> Any:
        rows = await self._all(sql, args)
        return rows[0] if rows else None

    async def _all(self, sql: str, args: Params = ()) -> list[Any]:
        # Execute and fetch to the end in one step of the connection's thread. A statement left
        # open between two awaits would hold SQLite's read snapshot for every other coroutine's
        # query on this connection, so reads under load could miss what was just committed.
        return list(await self._reader.execute_fetchall(sql, args))


async def _connect(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    for pragma in (
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = NORMAL",
        "PRAGMA foreign_keys = ON",
        "PRAGMA busy_timeout = 10000",
        # Sorting and subquery scratch space in memory: nothing to write on a full disk.
        "PRAGMA temp_store = MEMORY",
    ):
        await db.execute(pragma)
    return db


async def fetch_one(db: aiosqlite.Connection, sql: str, args: Params = ()) -> Any:
    """The first row of a query inside a transaction, or None."""
    async with db.execute(sql, args) as cursor:
        return await cursor.fetchone()


async def bump_evidence(db: aiosqlite.Connection, repository: str) -> None:
    """Count one more change of what policy sees of `repository` (and of any repository: the
    shared generation every process polls to forget the versions it remembers)."""
    await db.execute(
        "INSERT INTO evidence_versions (repository, version) VALUES (?, 1) "
        "ON CONFLICT (repository) DO UPDATE SET version = version + 1",
        (repository,),
    )
    await db.execute(
        "INSERT INTO shared_generations (name, generation) VALUES ('evidence', 1) "
        "ON CONFLICT (name) DO UPDATE SET generation = generation + 1"
    )


async def write_outbox(db: aiosqlite.Connection, rows: Sequence[OutboxRow]) -> None:
    """Put events in the outbox, pending and due at once, inside the caller's transaction."""
    for row in rows:
        await db.execute(
            "INSERT INTO event_outbox (endpoint, repository, type, body, created_at, "
            "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
            (row.endpoint, row.repository, row.type, row.body, row.created_at, 0.0),
        )


async def ensure_repository(db: aiosqlite.Connection, name: str, now: float) -> None:
    """Create the repository's row unless it exists."""
    await db.execute(
        "INSERT OR IGNORE INTO repositories (name, created_at) VALUES (?, ?)", (name, now)
    )
