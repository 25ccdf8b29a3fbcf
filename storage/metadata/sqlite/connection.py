"""SQLite connections and transactions: what every group of the SQLite backend runs its SQL on.

Reads go through one connection and writes through another, serialised by a lock, so a reader
never sees half a write and a write transaction never has a stranger's statement slipped into
it. WAL mode lets the garbage collector (another process) and the server use the database at
once.

Group commit: the hot writes (a manifest push) are *write jobs* (`SQLiteBase.write`,
`storage.metadata.group_commit`). Here a batch runs in one call on the writer's thread:
`BEGIN IMMEDIATE`, each job inside its own `SAVEPOINT`, one `COMMIT`. Should SQLite abandon the
whole transaction during a job (a full disk), every job of the batch fails. A job is an
ordinary coroutine function over the connection (`await db.execute(...)`), run to its end on
the writer thread over `ThreadConnection`, whose awaits all return at once: the same SQL
helpers serve both forms, and a batch costs one round trip to the writer thread instead of one
per statement (which, on a busy event loop, is what limited write throughput).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

import aiosqlite

from storage.errors import StorageFull, TextNotStorable
from storage.layout import MIGRATIONS, SCHEMA, SCHEMA_VERSION
from storage.metadata.group_commit import GroupCommit, Queued, WriteJob, run_to_end
from storage.metadata.manifests import RepositoryChanged
from storage.metadata.outbox import OutboxRow
from storage.metadata.sqlite.read_cache import CommitProbe, ManifestReads

#: SQLite's primary result code for "database or disk is full".
_SQLITE_FULL = 13

T = TypeVar("T")

#: One row of parameters, by position (`?`) or by name (`:name`).
Params = Sequence[Any] | Mapping[str, Any]


def _text_without_nul(value: str) -> str:
    """Every text bound to a statement of this process passes here (see below)."""
    if "\x00" in value:
        raise TextNotStorable()
    return value


# A text holding a NUL is refused before any statement, read or write, exactly as on PostgreSQL
# (whose text cannot carry one, `storage.metadata.postgresql.dialect.arguments`): SQLite would
# store it, so the same request would be stored on one backend and refused on the other. An
# adapter for `str` is the one place every bound value of every statement passes (whichever of
# the connections, cursors, and batch helpers ran it); `sqlite3` raises what it raises. It is
# global to `sqlite3` in this process: nothing of Trustyard's binds a text with a NUL anywhere.
sqlite3.register_adapter(str, _text_without_nul)


class SQLiteBase:
    """The two connections of one SQLite metadata database, and its transactions."""

    #: Manifests read since the last commit to the file, by anyone (`read_cache`); None where
    #: there is no such signal (PostgreSQL, which runs these groups over its own base).
    manifest_reads: ManifestReads | None = None

    def __init__(
        self, reader: aiosqlite.Connection, writer: aiosqlite.Connection, path: Path | None = None
    ) -> None:
        self._reader = reader
        self._writer = writer
        # Several processes writing one file (`serve --workers`, `trustyard gc`) take turns on
        # an flock first: the kernel hands it over the moment it is released, where SQLite's
        # own busy handler would sleep and poll (up to 100 ms a try) for its write lock.
        self._writelock_fd = _open_writelock(path) if path is not None else None
        self._write_lock = asyncio.Lock()
        self.path = path
        self.manifest_reads = ManifestReads(CommitProbe(path)) if path is not None else None
        self._group = GroupCommit(self._run_batch, _translate)

    @classmethod
    async def open(cls, path: Path) -> Self:
        """Open (creating if needed, migrating older columns) the database at `path`.

        Processes opening one file at once (`serve --workers` on a fresh data directory, a
        `trustyard gc` started beside the server) take turns on the cross-process write lock
        for the whole setup: the first switch to WAL needs SQLite's exclusive lock, which SQLite
        may refuse at once ("database is locked") without waiting for its busy handler."""
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _open_writelock(path)
        try:
            # Closing the descriptor releases the lock, also when cancelled while the thread
            # still waits for it (the lock then goes with the thread's last reference).
            await asyncio.to_thread(fcntl.flock, lock_fd, fcntl.LOCK_EX)
            reader, writer = await _set_up(path)
        finally:
            os.close(lock_fd)
        return cls(reader, writer, path)

    async def close(self) -> None:
        """Close both connections (checkpointing the WAL) once the queued writes are done."""
        await self._group.drain()
        async with self._write_lock:
            await self._writer.close()
        await self._reader.close()
        if self.manifest_reads is not None:
            self.manifest_reads.probe.close()
            self.manifest_reads = None
        if self._writelock_fd is not None:
            os.close(self._writelock_fd)
            self._writelock_fd = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction (`BEGIN IMMEDIATE`), serialised with every other write of this
        process: committed when the block ends, rolled back when it raises. SQLite's "disk
        full" becomes `StorageFull`."""
        async with self._write_lock, self._file_lock():
            try:
                try:
                    await self._writer.execute("BEGIN IMMEDIATE")
                    yield self._writer
                    await self._writer.execute("COMMIT")
                except BaseException:
                    # Also when cancelled while BEGIN or COMMIT waited for the writer's thread:
                    # it still runs there, and the rollback is queued after it, so the writer
                    # never stays inside a transaction every later write would fail to begin.
                    await self._writer._execute(_rollback_open, self._writer._conn)
                    raise
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_FULL:
                    if self._writer.in_transaction:
                        await self._writer.execute("ROLLBACK")
                    raise StorageFull("disk (metadata database)") from exc
                raise

    async def write(self, job: WriteJob[T]) -> T:
        """Run `job(connection)` in a write transaction shared with the other jobs submitted
        meanwhile (group commit: `storage.metadata.group_commit`); its result once committed.
        What the job raises is raised here, and nothing of it is stored."""
        return await self._group.submit(job)

    async def _run_batch(self, batch: list[Queued]) -> None:
        async with self._write_lock:
            # aiosqlite runs a function on its connection's thread only through this (private)
            # method: the whole batch is one round trip instead of one per statement.
            await self._writer._execute(_run_batch, self._writer._conn, batch, self._writelock_fd)

    @asynccontextmanager
    async def _file_lock(self) -> AsyncIterator[None]:
        """Hold the cross-process write lock (taken on the writer's thread: it may wait)."""
        if self._writelock_fd is None:
            yield
            return
        try:
            # Inside the `try`: cancelled while waiting, the lock is still taken on the thread,
            # and the release queued after it frees it for the other processes.
            await self._writer._execute(fcntl.flock, self._writelock_fd, fcntl.LOCK_EX)
            yield
        finally:
            await self._writer._execute(fcntl.flock, self._writelock_fd, fcntl.LOCK_UN)

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


def _rollback_open(conn: sqlite3.Connection) -> None:
    """On the writer thread: end the transaction a failed or cancelled one left open."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class _BatchLost(Exception):
    """SQLite rolled back the whole transaction during one job: no job of it is kept."""


def _run_batch(conn: sqlite3.Connection, batch: list[Queued], lock_fd: int | None) -> None:
    """On the writer thread: the batch's jobs, each in its savepoint, then one commit (holding
    the cross-process write lock `lock_fd` throughout)."""
    if lock_fd is not None:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        _run_locked(conn, batch)
    finally:
        if lock_fd is not None:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)


def _run_locked(conn: sqlite3.Connection, batch: list[Queued]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        adapter = ThreadConnection(conn)
        for queued in batch:
            conn.execute("SAVEPOINT job")
            try:
                queued.outcome = (True, run_to_end(queued.job(adapter)))
            except Exception as exc:
                if not conn.in_transaction:
                    raise _BatchLost() from exc
                conn.execute("ROLLBACK TO job")
                queued.outcome = (False, exc)
            conn.execute("RELEASE job")
        # Once for the batch (a job rolled back may have asked: a spurious move only makes
        # the processes read again what they remembered).
        for name in sorted(adapter.generations):
            conn.execute(BUMP_GENERATION, (name,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _translate(exc: BaseException) -> BaseException:
    """What a job's caller gets for `exc`: SQLite's "disk full" becomes `StorageFull`."""
    cause = exc.__cause__ if isinstance(exc, _BatchLost) else exc
    if (
        isinstance(cause, sqlite3.OperationalError)
        and getattr(cause, "sqlite_errorcode", 0) & 0xFF == _SQLITE_FULL
    ):
        return StorageFull("disk (metadata database)")
    if isinstance(exc, _BatchLost):
        return sqlite3.OperationalError(
            f"the write transaction was abandoned by another write of its batch ({cause})"
        )
    return exc


class _Ready:
    """A statement already executed: awaitable (the cursor) and an async context manager."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.cursor = ThreadCursor(cursor)

    def __await__(self) -> Generator[Any, None, ThreadCursor]:
        return self.cursor
        yield  # a generator that never suspends

    async def __aenter__(self) -> ThreadCursor:
        return self.cursor

    async def __aexit__(self, *exc: object) -> None:
        self.cursor.close()


class ThreadCursor:
    """aiosqlite's cursor surface over a `sqlite3.Cursor`, for write jobs."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        """Rows the statement changed."""
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        """The row id of the last inserted row."""
        return self._cursor.lastrowid

    async def fetchone(self) -> Any:
        """The next row, or None."""
        return self._cursor.fetchone()

    async def fetchall(self) -> list[Any]:
        """Every remaining row."""
        return self._cursor.fetchall()

    def close(self) -> None:
        """Release the statement."""
        self._cursor.close()


class ThreadConnection:
    """aiosqlite's connection surface over the writer's `sqlite3.Connection`, used on the
    writer thread by write jobs: every method runs at once, so awaiting never suspends."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        #: Shared generations the batch moves once, just before its commit.
        self.generations: set[str] = set()

    def bump_at_commit(self, name: str) -> None:
        """Move the shared generation `name` once for the batch, at its commit."""
        self.generations.add(name)

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""
        return self._conn.in_transaction

    def execute(self, sql: str, args: Params = ()) -> _Ready:
        """Run one statement (await it for the cursor, or `async with` it)."""
        return _Ready(self._conn.execute(sql, args))

    async def executemany(self, sql: str, rows: Any) -> ThreadCursor:
        """Run one statement for each row of parameters."""
        return ThreadCursor(self._conn.executemany(sql, rows))

    async def execute_fetchall(self, sql: str, args: Params = ()) -> list[Any]:
        """Every row of one query."""
        return self._conn.execute(sql, args).fetchall()


def _open_writelock(path: Path) -> int:
    """A descriptor of the file every process's writes and opens of `path` take turns on."""
    return os.open(f"{path}-writelock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


async def _set_up(path: Path) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
    """The reader and the writer of the file at `path`, its schema made and migrated. On any
    failure both are closed again: a connection left open keeps its thread, and the process
    could not exit."""
    connections: list[aiosqlite.Connection] = []
    try:
        writer = await _connect(path)
        connections.append(writer)
        # Every commit reaches the disk before it returns (an fsync of the WAL), so a push
        # answered 201 survives a power cut as its blobs do; group commit pays one fsync per
        # batch of pushes.
        await writer.execute("PRAGMA synchronous = FULL")
        # The whole schema in one transaction: one fsync where a statement each paid one (a
        # fresh data directory opens several times faster), and a crash part-way leaves no
        # half-made schema.
        await writer.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nCOMMIT;")
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
        connections.append(reader)
    except BaseException:
        for connection in connections:
            await connection.close()
        raise
    return reader, writer


async def _connect(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        for pragma in (
            # First: every pragma after it waits its turn instead of failing at once.
            "PRAGMA busy_timeout = 10000",
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA foreign_keys = ON",
            # Sorting and subquery scratch space in memory: nothing to write on a full disk.
            "PRAGMA temp_store = MEMORY",
        ):
            await db.execute(pragma)
    except BaseException:
        await db.close()
        raise
    return db


async def fetch_one(db: aiosqlite.Connection, sql: str, args: Params = ()) -> Any:
    """The first row of a query inside a transaction, or None."""
    async with db.execute(sql, args) as cursor:
        return await cursor.fetchone()


async def bump_evidence(db: aiosqlite.Connection, repository: str) -> None:
    """Count one more change of what policy sees of `repository` (and of any repository: the
    shared generation every process polls to forget the versions it remembers). In a write
    job the shared generation moves once for its whole batch, just before the commit: every
    process forgets its remembered versions at that commit either way, and one row updated
    per push (with its notice on PostgreSQL) was as many statements as pushes in the batch. On
    PostgreSQL's writer, whose statements cost it more, the batch's repositories' versions move
    there too, in one statement for all of them; a job of the batch reading a version counts
    the moves not written yet (`expect_evidence`)."""
    deferred = getattr(db, "evidence_at_commit", None)
    if deferred is not None:
        deferred(repository)
        return
    await db.execute(BUMP_EVIDENCE, (repository,))
    at_commit = getattr(db, "bump_at_commit", None)  # a write job's: once for its batch
    if at_commit is not None:
        at_commit("evidence")
    else:
        await bump_generation(db, "evidence")


#: Moves a repository's evidence version (`bump_evidence`).
BUMP_EVIDENCE = (
    "INSERT INTO evidence_versions (repository, version) VALUES (?, 1) "
    "ON CONFLICT (repository) DO UPDATE SET version = version + 1"
)
#: Moves the evidence versions of a JSON array of repositories (none twice), a batch's at once.
BUMP_EVIDENCE_OF = (
    "INSERT INTO evidence_versions (repository, version) "
    "SELECT value, 1 FROM (SELECT value FROM json_each(?)) AS moved WHERE true "
    "ON CONFLICT (repository) DO UPDATE SET version = version + 1"
)


#: Moves a shared generation (`bump_generation`, and a batch's bumps at its commit).
BUMP_GENERATION = (
    "INSERT INTO shared_generations (name, generation) VALUES (?, 1) "
    "ON CONFLICT (name) DO UPDATE SET generation = generation + 1"
)


async def bump_generation(db: aiosqlite.Connection, name: str) -> None:
    """Move the shared generation `name` inside the caller's transaction (every process
    watching it, or reading it in a write's premise, learns of the change at its commit)."""
    await db.execute(BUMP_GENERATION, (name,))


async def expect_evidence(db: aiosqlite.Connection, repository: str, decided: int) -> None:
    """Inside a write transaction (under the database's write lock): raise `RepositoryChanged`
    unless `repository` is still at the evidence version `decided`, i.e. nothing was pushed,
    tagged or deleted there since a decision read it."""
    cursor = await db.execute(
        "SELECT version FROM evidence_versions WHERE repository = ?", (repository,)
    )
    row = await cursor.fetchone()
    found = 0 if row is None else int(row[0])
    pending = getattr(db, "evidence_pending", None)
    if pending is not None and pending(repository):
        found += 1  # moved by a job before this one in the batch, written at its commit
    if found != decided:
        raise RepositoryChanged(repository, decided, found)


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
