"""The group-commit writer of the PostgreSQL backend: one pipelined connection on a thread.

A batch of write jobs (`storage.metadata.group_commit`) holds the database-wide write lock from
its first statement to its commit, so every writer of every replica waits for it. Run
statement by statement on the serving event loop, each round trip also waited for a turn of
the loop behind the requests being handled (2 to 10 ms where the database answered in 0.1 ms)
and a push paid about sixteen of them: 18 manifest PUTs/s on PostgreSQL. Here a batch runs on
a thread of its own over one connection in libpq's pipeline mode (psycopg): statements are sent
without waiting for their answers, and the thread waits only where a job reads a result (a
manifest's check that its blobs are present) and at the commit. A batch of pushes costs a few
round trips instead of sixteen per push, and the serving loop awaits only the batch's end.

A batch is one transaction: `BEGIN`, the write lock, each job inside its own savepoint (one
that raises is undone alone; a lone job needs none, its failure rolls the transaction back),
`COMMIT`. A job's read that almost always finds what it expects (a pushed manifest's blobs
present, its tag where the push was decided on: `storage.metadata.sqlite.manifests`) is not waited
for: the job goes on as if it had found that, and the real rows are compared once, before the
`COMMIT`; when one differs, the batch is rolled back and run carefully (below). So a batch of
pushes waits for the server twice (the compare, the commit) instead of once per push: on a
loaded machine each wait is also a wait for the thread to get a CPU and the GIL, while the
database-wide write lock is held. Nothing is acknowledged before the `COMMIT`'s answer, which
with `synchronous_commit` on (PostgreSQL's default) means it is on disk.

In a pipeline the server reports a failed statement at the next point the thread waits, which
may be in a later job. So when the database refuses a statement (as opposed to a job raising
on what it read, which is always its own), the batch is rolled back and run again carefully,
waiting for the answers at the end of every job: each job then gets its own error, and the
others are committed. Jobs act only through their connection, so running one again after a
rollback has the same effect as running it once; a callback a job calls to build its rows (a
library tag move's `announce`) runs once per run, so whatever its caller counts from it is taken
from the run that committed (`registry.pipeline.push`), never added up across runs. When the
connection itself fails (lost, the commit refused, a cancelled batch), it is dropped (the server
rolls back what it was in), the whole batch fails, and the next batch connects afresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from storage.errors import StorageFull, StorageUnavailable
from storage.metadata.group_commit import Queued, run_to_end
from storage.metadata.postgresql.dialect import arguments, translate
from storage.metadata.sqlite.connection import BUMP_GENERATION

log = logging.getLogger("storage.metadata.postgresql")

#: The jobs' savepoint (one at a time: released before the next is set).
_SAVEPOINT = "trustyard_job"

Params = Sequence[Any] | Mapping[str, Any]


class _Refused(Exception):
    """The database refused a statement of a pipelined batch (whose job is not known yet)."""


class Writer:
    """A thread and the one pipelined connection it writes the batches on."""

    def __init__(self, url: str, write_lock: int, redacted: str) -> None:
        self._url = url
        self._lock = int(write_lock)
        self._redacted = redacted
        self._connection: psycopg.Connection[Any] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="trustyard-postgresql-writer")

    async def run_batch(self, batch: list[Queued]) -> None:
        """Run the batch in one transaction, setting each job's `outcome`; raise (nothing of it
        committed) when the transaction as a whole is lost: `StorageFull` when the database's
        disk is full, `StorageUnavailable` when it cannot be reached."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._run, batch)
        except psycopg.errors.DiskFull as exc:
            raise StorageFull("disk (metadata database)") from exc
        except psycopg.OperationalError as exc:
            log.error("metadata database %s: %s: %s", self._redacted, type(exc).__name__, exc)
            raise StorageUnavailable(
                {"backend": "postgresql", "reason": f"metadata database: {type(exc).__name__}"}
            ) from exc

    async def close(self) -> None:
        """Close the connection and end the thread."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._disconnect)
        self._thread.shutdown(wait=False)

    # -- on the writer's thread ------------------------------------------------------------

    def _run(self, batch: list[Queued]) -> None:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=10,
                cursor_factory=psycopg.RawCursor,
                # Whatever the server's default: a commit returns once it is on disk.
                options="-c synchronous_commit=on",
            )
        connection = self._connection
        try:
            try:
                self._attempt(connection, batch, careful=False)
            except _Refused:
                _rollback(connection)
                self._attempt(connection, batch, careful=True)
        except BaseException:
            self._disconnect()
            raise

    def _attempt(
        self, connection: psycopg.Connection[Any], batch: list[Queued], careful: bool
    ) -> None:
        """One run of the batch; `_Refused` (rolled back) when, not `careful`, the database
        refused a statement."""
        lone = len(batch) == 1
        careful = careful or lone  # a lone job's errors can only be its own
        with connection.pipeline() as pipeline:
            db = PipelineConnection(connection, pipeline, speculative=not careful)
            connection.execute("BEGIN")
            connection.execute("SELECT pg_advisory_xact_lock($1)", (self._lock,))
            try:
                for number, queued in enumerate(batch):
                    if not lone:
                        if number:
                            connection.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
                        connection.execute(f"SAVEPOINT {_SAVEPOINT}")
                    try:
                        result = run_to_end(queued.job(db))
                        if careful:
                            pipeline.sync()  # this job's answers are in: its errors are its own
                    except psycopg.Error as exc:
                        if _lost(exc):
                            raise  # the connection or the server, not the job
                        if not careful:
                            raise _Refused() from exc
                        _undo(connection, pipeline, lone)
                        queued.outcome = (False, _job_error(exc))
                    except Exception as exc:
                        _undo(connection, pipeline, lone)
                        queued.outcome = (False, exc)
                    else:
                        queued.outcome = (True, result)
                    if lone and not queued.outcome[0]:
                        return
                # Once for the batch, not once per job that asked (`bump_evidence`).
                for name in sorted(db.generations):
                    db.execute(BUMP_GENERATION, (name,))
                if db.speculated:
                    # What the jobs were told they read must be what the server found, before
                    # anything commits: else the batch is run again reading the real rows.
                    pipeline.sync()
                    if not db.speculation_held():
                        raise _Refused()
                commit = connection.execute("COMMIT")
                pipeline.sync()
                # A transaction the server had failed answers COMMIT with ROLLBACK.
                if commit.statusmessage != "COMMIT":
                    raise psycopg.OperationalError(f"COMMIT answered {commit.statusmessage}")
            except psycopg.Error as exc:
                # Refused by an undo or at the commit: the batch as a whole, once careful.
                if careful or _lost(exc):
                    raise
                raise _Refused() from exc

    def _disconnect(self) -> None:
        """Drop the connection: the server rolls back whatever it was in."""
        connection, self._connection = self._connection, None
        if connection is not None and not connection.closed:
            connection.close()


def _lost(exc: psycopg.Error) -> bool:
    """Whether `exc` is the connection's or the server's failure rather than a statement's
    (a statement skipped because an earlier one of the pipeline failed is the latter)."""
    return isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, psycopg.errors.PipelineAborted
    )


def _undo(connection: psycopg.Connection[Any], pipeline: psycopg.Pipeline, lone: bool) -> None:
    """Undo a failed job: its savepoint, or (alone) the transaction."""
    connection.execute("ROLLBACK" if lone else f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
    pipeline.sync()


def _rollback(connection: psycopg.Connection[Any]) -> None:
    """Roll back a refused batch (out of the pipeline, whose errors are read by now)."""
    connection.execute("ROLLBACK")


def _job_error(exc: Exception) -> Exception:
    """What a failed job's caller gets: a full disk is `StorageFull`, as for a whole batch."""
    if isinstance(exc, psycopg.errors.DiskFull):
        error = StorageFull("disk (metadata database)")
        error.__cause__ = exc
        return error
    return exc


class _Ready:
    """A statement sent: awaitable (its cursor, never suspending) and an async context
    manager, as the groups use aiosqlite's."""

    def __init__(self, cursor: PipelineCursor) -> None:
        self.cursor = cursor

    def __await__(self) -> Generator[Any, None, PipelineCursor]:
        return self.cursor
        yield  # a generator that never suspends

    async def __aenter__(self) -> PipelineCursor:
        return self.cursor

    async def __aexit__(self, *exc: object) -> None:
        return None


class PipelineCursor:
    """The rows or the count of one pipelined statement: reading either waits for its answer."""

    def __init__(self, cursor: psycopg.Cursor[Any], sync: Callable[[], None]) -> None:
        self._cursor = cursor
        self._sync = sync

    @property
    def rowcount(self) -> int:
        """Rows the statement changed."""
        self._sync()
        return self._cursor.rowcount

    async def fetchone(self) -> Any:
        """The next row, or None."""
        return self._cursor.fetchone()

    async def fetchall(self) -> list[Any]:
        """Every remaining row."""
        return self._cursor.fetchall()


class PipelineConnection:
    """The connection surface the SQLite groups' write jobs use (`execute`, `executemany`,
    `execute_fetchall`), over the writer's pipelined connection: each statement is rewritten by
    `dialect` and sent at once, and its answer waited for only when read."""

    def __init__(
        self,
        connection: psycopg.Connection[Any],
        pipeline: psycopg.Pipeline,
        *,
        speculative: bool = False,
    ) -> None:
        self.connection = connection
        self._pipeline = pipeline
        self._speculative = speculative
        #: Queries answered with what their job expected, and that: checked before the commit.
        self.speculated: list[tuple[psycopg.Cursor[Any], list[tuple[Any, ...]]]] = []
        #: Shared generations the batch moves once, just before its commit.
        self.generations: set[str] = set()

    def bump_at_commit(self, name: str) -> None:
        """Move the shared generation `name` once for the batch, at its commit."""
        self.generations.add(name)

    def _sync(self) -> None:
        self._pipeline.sync()

    def execute(self, sql: str, args: Params = ()) -> _Ready:
        """Send one statement; its cursor."""
        text, names = translate(sql)
        cursor = self.connection.cursor()
        cursor.execute(text, arguments(names, args))
        return _Ready(PipelineCursor(cursor, self._sync))

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """Send one statement once per row of parameters."""
        rows = list(rows)
        if not rows:
            return
        text, names = translate(sql)
        self.connection.cursor().executemany(text, [arguments(names, row) for row in rows])

    async def execute_fetchall(self, sql: str, args: Params = ()) -> list[Any]:
        """The rows of a query."""
        return await (await self.execute(sql, args)).fetchall()

    def speculate(
        self, sql: str, args: Params, expected: Sequence[tuple[Any, ...]]
    ) -> list[tuple[Any, ...]]:
        """A query's rows, as the job `expected` them without waiting for the answer (checked
        before the commit, `speculation_held`); when the batch is run carefully, the real
        rows (`_read_expecting` of `storage.metadata.sqlite.manifests`)."""
        text, names = translate(sql)
        cursor = self.connection.cursor()
        cursor.execute(text, arguments(names, args))
        if not self._speculative:
            self._sync()
            return [tuple(row) for row in cursor.fetchall()]
        self.speculated.append((cursor, list(expected)))
        return list(expected)

    def speculation_held(self) -> bool:
        """Whether every speculated query found what its job expected (after a sync)."""
        return all(
            sorted(tuple(row) for row in cursor.fetchall()) == sorted(expected)
            for cursor, expected in self.speculated
        )
