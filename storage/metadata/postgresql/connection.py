"""PostgreSQL connections and transactions: what the groups run their statements on there.

The groups of `storage.metadata.sqlite` hold every statement; on PostgreSQL they run unchanged
over `PGConnection`, which speaks the part of aiosqlite's connection they use (`execute` as an
awaitable or a context manager giving a cursor, `executemany`) and rewrites each statement with
`storage.metadata.postgresql.dialect`.

Transactions keep SQLite's semantics exactly: a write transaction holds one cluster-wide lock
(`pg_advisory_xact_lock`), as SQLite's `BEGIN IMMEDIATE` holds the file's write lock, so writes
from every process and replica sharing the database run one after another and a rule decided
inside one (a tag's immutability, a GC's re-check) cannot be raced. Reads run on the pool in
autocommit, each statement seeing the last committed state, as on SQLite's reader connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Self, TypeVar

import asyncpg

from storage.errors import StorageFull, StorageUnavailable
from storage.layout import MIGRATIONS, SCHEMA_VERSION
from storage.metadata.group_commit import GroupCommit, Queued, WriteJob
from storage.metadata.postgresql.dialect import arguments, schema, translate
from storage.metadata.postgresql.url import MetadataUrlInvalid, check_url
from storage.metadata.postgresql.writer import Writer

T = TypeVar("T")

#: The advisory lock every write transaction holds (any constant; "trustyard" in ASCII, cut).
WRITE_LOCK = 0x7472757374796172
#: Connections per process: reads in parallel, one write at a time (the lock above).
POOL_SIZE = 8

Params = Sequence[Any] | Mapping[str, Any]

log = logging.getLogger("storage.metadata.postgresql")

#: What losing the server looks like: a request is answered 503 UNAVAILABLE (never a 500), and
#: a write that failed this way was rolled back by the server.
_CONNECTION_LOST = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.CrashShutdownError,
)


@asynccontextmanager
async def _unavailable_when_lost(url: str) -> AsyncIterator[None]:
    try:
        yield
    except _CONNECTION_LOST as exc:
        log.error("metadata database %s: %s: %s", redact(url), type(exc).__name__, exc)
        raise StorageUnavailable(
            {"backend": "postgresql", "reason": f"metadata database: {type(exc).__name__}"}
        ) from exc


class MetadataUnreachable(Exception):
    """The configured PostgreSQL database cannot be reached or refuses us: the message says
    which, in one line, for the operator."""


class PGCursor:
    """The rows (or the count of rows changed) of one statement, as aiosqlite's cursor shows
    them."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount

    async def fetchone(self) -> Any:
        """The next row, or None."""
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    async def fetchall(self) -> list[Any]:
        """The rows not yet fetched."""
        rows, self._next = self._rows[self._next :], len(self._rows)
        return rows

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while (row := await self.fetchone()) is not None:
            yield row

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Running:
    """A statement's result: awaited, or entered with `async with` (as aiosqlite allows)."""

    def __init__(self, run: Any) -> None:
        self._run = run

    def __await__(self) -> Generator[Any, None, PGCursor]:
        return self._run.__await__()

    async def __aenter__(self) -> PGCursor:
        return await self._run

    async def __aexit__(self, *exc: object) -> None:
        return None


def _returns_rows(sql: str) -> bool:
    head = sql.lstrip()[:6].upper()
    return head in ("SELECT", "WITH  ") or head.startswith("WITH") or " RETURNING " in sql


class PGConnection:
    """One PostgreSQL connection, spoken to as the SQLite groups speak to aiosqlite's."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    def execute(self, sql: str, args: Params = ()) -> _Running:
        """Run one statement; its cursor (rows of a query, `rowcount` of a change)."""
        return _Running(self._execute(sql, args))

    async def _execute(self, sql: str, args: Params) -> PGCursor:
        text, names = translate(sql)
        params = arguments(names, args)
        if _returns_rows(text):
            rows = await self.connection.fetch(text, *params)
            return PGCursor(rows, len(rows))
        status = await self.connection.execute(text, *params)
        count = status.rsplit(" ", 1)[-1]
        return PGCursor([], int(count) if count.isdigit() else -1)

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """Run one statement once per row of parameters."""
        rows = list(rows)
        if not rows:
            return
        text, names = translate(sql)
        await self.connection.executemany(text, [arguments(names, row) for row in rows])

    async def execute_fetchall(self, sql: str, args: Params = ()) -> list[Any]:
        """The rows of a query."""
        return await (await self.execute(sql, args)).fetchall()


class PostgreSQLBase:
    """The connection pool of one PostgreSQL metadata database, and its transactions."""

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self._write_lock = asyncio.Lock()
        self.url = url
        self.path = None
        self._group = GroupCommit(self._run_batch, _translate)
        #: Where group-committed batches run (`writer`), started with the first batch.
        self._writer: Writer | None = None

    @classmethod
    async def open(cls, url: str) -> Self:
        """Connect to the database at `url` and create (or check) the schema."""
        pool = await connect_pool(url)
        try:
            async with pool.acquire() as connection, connection.transaction():
                # Two replicas starting at once must not both create the schema.
                await connection.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                await ensure_schema(PGConnection(connection))
        except BaseException:
            await pool.close()
            raise
        return cls(pool, url)

    async def close(self) -> None:
        """Close the pool (after the last call and the queued writes)."""
        await self._group.drain()
        if self._writer is not None:
            await self._writer.close()
        async with self._write_lock:
            await self._pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PGConnection]:
        """A write transaction holding the write lock: committed when the block ends, rolled
        back when it raises. PostgreSQL's "disk full" becomes `StorageFull`."""
        async with (
            self._write_lock,
            _unavailable_when_lost(self.url),
            self._pool.acquire() as connection,
        ):
            try:
                async with connection.transaction():
                    await connection.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                    yield PGConnection(connection)
            except asyncpg.DiskFullError as exc:
                raise StorageFull("disk (metadata database)") from exc

    async def write(self, job: WriteJob[T]) -> T:
        """Run `job(connection)` in a write transaction shared with the other jobs submitted
        meanwhile (group commit: `storage.metadata.group_commit`), on the writer's own thread
        and connection (`storage.metadata.postgresql.writer`): one advisory lock, one commit
        for the batch; the job's result once committed."""
        return await self._group.submit(job)

    async def _run_batch(self, batch: list[Queued]) -> None:
        if self._writer is None:
            self._writer = Writer(self.url, WRITE_LOCK, redact(self.url))
        await self._writer.run_batch(batch)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[PGConnection]:
        """A connection inside one repeatable-read transaction, rolled back at the end: a
        consistent view that never blocks a writer, where TEMP tables may be written."""
        async with self._pool.acquire() as connection:
            transaction = connection.transaction(isolation="repeatable_read")
            await transaction.start()
            try:
                yield PGConnection(connection)
            finally:
                await transaction.rollback()

    async def read(self, sql: str, args: Params = ()) -> list[Any]:
        """Rows of a read-only query (tuples, as SQLite's `read` gives them)."""
        return [tuple(row) for row in await self._all(sql, args)]

    async def ping(self) -> None:
        """Raise unless the database answers a query."""
        await self._all("SELECT 1")

    async def _one(self, sql: str, args: Params = ()) -> Any:
        rows = await self._all(sql, args)
        return rows[0] if rows else None

    async def _all(self, sql: str, args: Params = ()) -> list[Any]:
        text, names = translate(sql)
        async with _unavailable_when_lost(self.url):
            return list(await self._pool.fetch(text, *arguments(names, args)))


def _translate(exc: BaseException) -> BaseException:
    """What a write job's caller gets (`transaction` already made disk-full and lost
    connections `StorageFull` and `StorageUnavailable`)."""
    return exc


class PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection given back without asyncpg's reset query (`RESET ALL`, `UNLISTEN *`,
    `CLOSE ALL`, `pg_advisory_unlock_all()`): one more round trip after every statement, on the
    caller's time, for session state the pool's users never make. Reads and transactions set
    no session variable, listen on their own connections (`listen_generations`) and take
    session locks on their own (`PostgreSQLCoordination.exclusive`); cursors and TEMP tables
    end with their transaction. A transaction left open is still rolled back at release."""

    def get_reset_query(self) -> str:
        """Nothing to reset (see the class)."""
        return ""


async def connect_pool(url: str) -> asyncpg.Pool:
    """A pool of connections to `url`; `MetadataUnreachable` (one line) when it cannot be had."""
    try:
        # Before any connection: the writer connects at the first write only.
        check_url(url)
    except MetadataUrlInvalid as exc:
        raise MetadataUnreachable(f"metadata URL {redact(url)}: {exc}") from None
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            timeout=10,
            connection_class=PooledConnection,
            # Whatever the server's default: a commit returns once it is on disk.
            server_settings={"synchronous_commit": "on"},
        )
    except (TimeoutError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or "no answer in 10 seconds"
        raise MetadataUnreachable(
            f"PostgreSQL at {redact(url)} is unreachable ({reason})"
        ) from None
    except asyncpg.PostgresError as exc:
        raise MetadataUnreachable(f"PostgreSQL at {redact(url)} refused: {exc}") from None
    except (asyncpg.InterfaceError, ValueError) as exc:
        raise MetadataUnreachable(f"metadata URL {redact(url)} is not usable: {exc}") from None
    assert pool is not None
    return pool


def redact(url: str) -> str:
    """`url` without its password (for messages and logs)."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, credentials = head.partition("//")
    user = credentials.split(":", 1)[0]
    return f"{scheme}//{user}:***@{tail}"


async def ensure_schema(db: PGConnection) -> None:
    """Create the tables that are missing and check (or record) the schema version."""
    # One script, one round trip (the simple query protocol runs it statement by statement in
    # the caller's transaction): a statement each cost a round trip, most of a start-up.
    await db.connection.execute(";\n".join(translate(statement)[0] for statement in schema()))
    row = await (await db.execute("SELECT version FROM schema_version")).fetchone()
    if row is None:
        await db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
    elif row[0] != SCHEMA_VERSION:
        raise RuntimeError(f"schema version {row[0]}, this Trustyard knows {SCHEMA_VERSION}")
    for table, column, statements in MIGRATIONS:
        present = await (
            await db.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = ? AND column_name = ?",
                (table, column),
            )
        ).fetchone()
        if present is None:
            for statement in statements:
                await db.execute(statement)


async def schema_version_at(url: str) -> int | None:
    """The schema version recorded in the database at `url` (None: no schema yet), read without
    writing; `MetadataUnreachable` when the database cannot be reached or used."""
    pool = await connect_pool(url)
    try:
        async with pool.acquire() as connection:
            exists = await connection.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
            if not exists:
                return None
            version = await connection.fetchval("SELECT version FROM schema_version")
            return None if version is None else int(version)
    except asyncpg.PostgresError as exc:
        raise MetadataUnreachable(f"PostgreSQL at {redact(url)} refused: {exc}") from None
    finally:
        await pool.close()
