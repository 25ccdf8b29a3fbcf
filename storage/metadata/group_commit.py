"""Group commit: concurrent write jobs share one transaction and one commit.

A write job is a coroutine function over a connection of the metadata backend (the same
`await db.execute(...)` surface every group of `storage.metadata.sqlite` uses). Jobs submitted
while the writer is busy queue up; the next turn hands all of them (at most `MAX_BATCH`) to the
backend's `run_batch`, which runs them one after the other in one transaction, each inside its
own savepoint, and commits once. Only after that commit has returned does any job's caller get
its result, so nothing is acknowledged before it is durable. A job that raises is rolled back to
its savepoint alone: its caller gets the error, the others are committed. If the transaction as
a whole is lost (the commit fails, the disk fills, the database goes away), every job of the
batch fails and none was acknowledged.

Jobs run in submission order on one connection, each seeing the writes of those before it:
the outcome is the one the same writes would have had as separate transactions in that order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

#: At most this many write jobs share one commit (bounds a job's wait behind others).
MAX_BATCH = 64

T = TypeVar("T")
#: A write job: a coroutine function over the backend's write connection.
WriteJob = Callable[[Any], Awaitable[T]]


@dataclass
class Queued:
    """One submitted job and what became of it (set by `run_batch`)."""

    job: WriteJob[Any]
    done: asyncio.Future[Any]
    #: (True, result) or (False, the exception it raised), once it ran inside the batch.
    outcome: tuple[bool, Any] = field(default=(False, None))


#: Runs a batch in one transaction, setting each job's `outcome`; raises when nothing of the
#: batch was committed.
RunBatch = Callable[[list[Queued]], Awaitable[None]]


class GroupCommit:
    """The queue of write jobs of one backend, and the turn that commits them."""

    def __init__(
        self, run_batch: RunBatch, translate: Callable[[BaseException], BaseException]
    ) -> None:
        self._run_batch = run_batch
        self._translate = translate
        self._jobs: list[Queued] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, job: WriteJob[T]) -> T:
        """Run `job` in the next batch; its result once the batch is committed."""
        queued = Queued(job, asyncio.get_running_loop().create_future())
        self._jobs.append(queued)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        # Shielded: the batch goes on for its other jobs even if this caller is cancelled.
        return await asyncio.shield(queued.done)  # type: ignore[no-any-return]

    async def drain(self) -> None:
        """Wait until every submitted job is committed or failed (before closing)."""
        while self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        try:
            while self._jobs:
                batch, self._jobs = self._jobs[:MAX_BATCH], self._jobs[MAX_BATCH:]
                try:
                    await self._run_batch(batch)
                except BaseException as exc:
                    # Nothing of this batch was committed: every job of it fails.
                    for queued in batch:
                        if not queued.done.done():
                            queued.done.set_exception(self._translate(exc))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for queued in batch:
                    ok, value = queued.outcome
                    if queued.done.done():
                        continue
                    if ok:
                        queued.done.set_result(value)
                    else:
                        queued.done.set_exception(self._translate(value))
        finally:
            self._flusher = None
            if self._jobs:  # submitted while the last turn was ending
                self._flusher = asyncio.create_task(self._flush())


def run_to_end(awaitable: Awaitable[T]) -> T:
    """Drive a write job's coroutine to its end without an event loop, on a writer thread:
    every await in it is on a connection whose statements never suspend."""
    coroutine = awaitable.__await__()
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a write job awaited something other than its database connection")
