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

A batch is one transaction: `BEGIN`, the write lock, its jobs, `COMMIT`. A job's read that
almost always finds what it expects (a pushed manifest's blobs present, its tag where the push
was decided on: `storage.metadata.sqlite.manifests`) is not waited for: the job goes on as if it
had found that, and the server compares the real rows in a statement that fails when they
differ (`speculate`), so the `COMMIT` is refused and the batch rolled back and run carefully
(below). So a batch of pushes waits for the server once, for its commit, instead of once per
push (or twice, were the rows compared here): on a loaded machine each wait is also a wait for
the thread to get a CPU and the GIL, while the database-wide write lock is held.
Nothing is acknowledged before the `COMMIT`'s answer, which with `synchronous_commit` on
(PostgreSQL's default) means it is on disk.

In a pipeline the server reports a failed statement at the next point the thread waits, which
may be in a later job. So when the database refuses a statement, or a job raises (jobs almost
never do: what they would raise on is speculated, above), the batch is rolled back and run
again carefully: each job inside its own savepoint (a lone job needs none, its failure rolls
the transaction back), waiting for the answers at the end of every job, so each job gets its
own error, is undone alone, and the others are committed. (Savepoints for every job of every
batch, in case one fails, were two of a push's fourteen statements.) Jobs act only through
their connection, so running one again after a rollback has the same effect as running it
once; a callback a job calls to build its rows (a library tag move's `announce`) runs once per
run, so whatever its caller counts from it is taken from the run that committed
(`registry.pipeline.push`), never added up across runs. When the connection itself fails
(lost, the commit refused, a cancelled batch), it is dropped (the server rolls back what it was
in), the whole batch fails, and the next batch connects afresh.

Each statement is sent on a cursor kept for it (`Cursors`): a fresh cursor per statement cost
more than the statement's sending.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import psycopg

from storage.errors import StorageFull, StorageUnavailable
from storage.metadata.group_commit import Queued, run_to_end
from storage.metadata.postgresql.dialect import arguments, translate
from storage.metadata.sqlite.connection import BUMP_EVIDENCE_OF, BUMP_GENERATION

log = logging.getLogger("storage.metadata.postgresql")

#: The jobs' savepoint (one at a time: released before the next is set).
_SAVEPOINT = "trustyard_job"
#: The writer's own statements, each one string (a cursor keeps its setup for the same one).
_BEGIN = "BEGIN"
_LOCK = "SELECT pg_advisory_xact_lock($1)"
_SET_SAVEPOINT = f"SAVEPOINT {_SAVEPOINT}"
_RELEASE_SAVEPOINT = f"RELEASE SAVEPOINT {_SAVEPOINT}"
_ROLLBACK_SAVEPOINT = f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}"
_BUMP_GENERATION = translate(BUMP_GENERATION)[0]
_BUMP_EVIDENCE = translate(BUMP_EVIDENCE_OF)[0]

Params = Sequence[Any] | Mapping[str, Any]

#: Statements whose cursors are kept for their next use (`Cursors`).
KEPT_STATEMENTS = 256


class _Refused(Exception):
    """The database refused a statement of a pipelined batch (whose job is not known yet)."""


class Writer:
    """A thread and the one pipelined connection it writes the batches on."""

    def __init__(self, url: str, write_lock: int, redacted: str) -> None:
        self._url = url
        self._lock = int(write_lock)
        self._redacted = redacted
        self._connection: psycopg.Connection[Any] | None = None
        #: Cursors of the connection no statement's reader needs any more (`Cursors`).
        self._cursors: Cursors | None = None
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
            self._cursors = Cursors(self._connection)
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
        assert self._cursors is not None
        send = self._cursors.send
        with connection.pipeline() as pipeline:
            db = PipelineConnection(connection, pipeline, self._cursors, speculative=not careful)
            send(_BEGIN)
            send(_LOCK, (self._lock,))
            try:
                for number, queued in enumerate(batch):
                    if careful and not lone:
                        if number:
                            send(_RELEASE_SAVEPOINT)
                        send(_SET_SAVEPOINT)
                    try:
                        result = run_to_end(queued.job(db))
                        if careful:
                            pipeline.sync()  # this job's answers are in: its errors are its own
                    except psycopg.Error as exc:
                        if _lost(exc):
                            raise  # the connection or the server, not the job
                        if not careful:
                            raise _Refused() from exc
                        _undo(send, pipeline, lone)
                        queued.outcome = (False, _job_error(exc))
                    except Exception as exc:
                        if not careful:
                            # No savepoint to undo it alone: the batch runs again, carefully.
                            raise _Refused() from exc
                        _undo(send, pipeline, lone)
                        queued.outcome = (False, exc)
                    else:
                        queued.outcome = (True, result)
                    finally:
                        db.job_done(succeeded=queued.outcome[0])
                    if lone and not queued.outcome[0]:
                        return
                # Once for the batch, not once per job that asked (`bump_evidence`).
                if db.evidence:
                    send(_BUMP_EVIDENCE, (json.dumps(sorted(db.evidence)),))
                for name in sorted(db.generations):
                    send(_BUMP_GENERATION, (name,))
                commit = self._cursors.commit
                commit.execute("COMMIT")
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
        self._cursors = None
        if connection is not None and not connection.closed:
            connection.close()


def _lost(exc: psycopg.Error) -> bool:
    """Whether `exc` is the connection's or the server's failure rather than a statement's
    (a statement skipped because an earlier one of the pipeline failed is the latter)."""
    return isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, psycopg.errors.PipelineAborted
    )


def _undo(send: Callable[..., None], pipeline: psycopg.Pipeline, lone: bool) -> None:
    """Undo a failed job: its savepoint, or (alone) the transaction."""
    send("ROLLBACK" if lone else _ROLLBACK_SAVEPOINT)
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


class Cursors:
    """The writer connection's cursors, used again and again, each for one statement.

    A cursor made for each statement cost more than sending the statement: a fresh cursor
    looks up how to send each of its parameters' types again (about 25 of its 40 us), and so
    does a cursor sent another statement than its last. So a statement is sent on a cursor that
    last sent the same statement, and its cursor is handed back once nothing can read its
    answer any more: at the end of the job that sent it (a job reads its answers before it
    ends). A cursor handed back may still get the answer of the statement it last sent (at the
    next sync); the next use replaces that answer with its own, which nobody read either way."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection
        self._free: dict[tuple[str, bool], list[psycopg.Cursor[Any]]] = {}
        #: The commit's, whose answer is read.
        self.commit: psycopg.Cursor[Any] = connection.cursor()

    def take(self, text: str, many: bool = False) -> psycopg.Cursor[Any]:
        """A cursor no one reads, for the statement `text` (sent once, or `many` times)."""
        free = self._free.get((text, many))
        return free.pop() if free else self._connection.cursor()

    def send(self, text: str, args: Params = ()) -> None:
        """Send one of the writer's own statements (transaction, lock, savepoints), whose
        answer no one reads."""
        cursor = self.take(text)
        cursor.execute(text, args)
        self.give_back([(text, False, cursor)])

    def give_back(self, lent: list[tuple[str, bool, psycopg.Cursor[Any]]]) -> None:
        """Cursors (with the statement each sent) whose answers no one will read; kept for
        at most `KEPT_STATEMENTS` statements (the writer's are a few dozen; one made of a
        variable list of placeholders would otherwise keep a cursor per length)."""
        for text, many, cursor in lent:
            free = self._free.get((text, many))
            if free is None:
                if len(self._free) >= KEPT_STATEMENTS:
                    continue  # dropped: the statement gets a fresh cursor each time
                free = self._free[(text, many)] = []
            free.append(cursor)


class PipelineConnection:
    """The connection surface the SQLite groups' write jobs use (`execute`, `executemany`,
    `execute_fetchall`), over the writer's pipelined connection: each statement is rewritten by
    `dialect` and sent at once, and its answer waited for only when read."""

    def __init__(
        self,
        connection: psycopg.Connection[Any],
        pipeline: psycopg.Pipeline,
        cursors: Cursors,
        *,
        speculative: bool = False,
    ) -> None:
        self.connection = connection
        self._pipeline = pipeline
        self._cursors = cursors
        #: Cursors lent to the running job (handed back at its end, `job_done`).
        self._lent: list[tuple[str, bool, psycopg.Cursor[Any]]] = []
        self._speculative = speculative
        #: Shared generations the batch moves once, just before its commit.
        self.generations: set[str] = set()
        #: Repositories whose evidence version the batch moves once, just before its commit.
        self.evidence: set[str] = set()
        #: The running job's moves (the batch's once the job succeeded, `job_done`).
        self._job_generations: set[str] = set()
        self._job_evidence: set[str] = set()

    def bump_at_commit(self, name: str) -> None:
        """Move the shared generation `name` once for the batch, at its commit."""
        self._job_generations.add(name)

    def evidence_at_commit(self, repository: str) -> None:
        """Move `repository`'s evidence version (and the shared `evidence` generation) once for
        the batch, at its commit (`storage.metadata.sqlite.connection.bump_evidence`)."""
        self._job_evidence.add(repository)
        self._job_generations.add("evidence")

    def evidence_pending(self, repository: str) -> bool:
        """Whether a job of this batch (the running one included) moved `repository`'s
        evidence version, not written yet (`expect_evidence`)."""
        return repository in self.evidence or repository in self._job_evidence

    def _sync(self) -> None:
        self._pipeline.sync()

    def _cursor(self, text: str, many: bool = False) -> psycopg.Cursor[Any]:
        cursor = self._cursors.take(text, many)
        self._lent.append((text, many, cursor))
        return cursor

    def job_done(self, succeeded: bool) -> None:
        """The running job ended: the cursors it was lent go back, and what it moves at the
        commit is the batch's if it `succeeded`."""
        self._cursors.give_back(self._lent)
        self._lent = []
        if succeeded:
            self.generations |= self._job_generations
            self.evidence |= self._job_evidence
        self._job_generations = set()
        self._job_evidence = set()

    def execute(self, sql: str, args: Params = ()) -> _Ready:
        """Send one statement; its cursor."""
        text, names = translate(sql)
        cursor = self._cursor(text)
        cursor.execute(text, arguments(names, args))
        return _Ready(PipelineCursor(cursor, self._sync))

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """Send one statement once per row of parameters."""
        rows = list(rows)
        if not rows:
            return
        text, names = translate(sql)
        # Never a cursor that sent a single statement: an `executemany` counts its answers in.
        self._cursor(text, many=True).executemany(text, [arguments(names, row) for row in rows])

    async def execute_fetchall(self, sql: str, args: Params = ()) -> list[Any]:
        """The rows of a query."""
        return await (await self.execute(sql, args)).fetchall()

    def speculate(
        self, sql: str, args: Params, expected: Sequence[tuple[Any, ...]], columns: int
    ) -> list[tuple[Any, ...]]:
        """A query's rows (of `columns` text columns), as the job `expected` them, without
        waiting for the answer; when the batch is run carefully, the real rows
        (`_read_expecting` of `storage.metadata.sqlite.manifests`).

        Speculating, the query is sent inside a statement that fails (division by zero) when
        the rows it finds are not the `expected` ones (compared as multisets, by code point):
        the transaction is then aborted, its `COMMIT` refused, and the batch run again
        carefully. So the check costs no wait of its own: it is answered with the commit."""
        text, names = translate(sql)
        values = arguments(names, args)
        if not self._speculative:
            cursor = self._cursor(text)
            cursor.execute(text, values)
            self._sync()
            return [tuple(row) for row in cursor.fetchall()]
        check = _expecting(text, len(values), columns)
        rows = [list(row) for row in expected]
        self._cursor(check).execute(check, [*values, json.dumps(rows)])
        return [tuple(row) for row in expected]


@lru_cache(maxsize=64)
def _expecting(query: str, parameters: int, columns: int) -> str:
    """A statement failing with a division by zero unless `query` (with `parameters`
    parameters, `columns` text columns) finds exactly the rows of the JSON array of arrays
    given as the next parameter."""
    given = f"${parameters + 1}"
    values = ", ".join(f'(e->>{n}) COLLATE "C"' for n in range(columns))
    expected = f"SELECT {values} FROM json_array_elements(CAST({given} AS JSON)) AS e"
    # Equal as multisets: nothing found beyond what is expected, and as many rows. (The query
    # is run once: a CTE named twice is computed once.)
    differ = (
        f"EXISTS (SELECT * FROM found EXCEPT ALL {expected}) "
        f"OR (SELECT count(*) FROM found) <> json_array_length(CAST({given} AS JSON))"
    )
    # Not a constant: PostgreSQL may fold a constant 1/0 while planning, whatever the CASE.
    return f"WITH found AS ({query}) SELECT 1 / (CASE WHEN {differ} THEN 0 ELSE 1 END)"
