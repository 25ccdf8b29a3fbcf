"""A write cancelled while it waits for SQLite (a request cut short, the decision-log flusher
stopped by shutdown) leaves the database as it found it: the writer connection is not left
inside a transaction, and the write lock every process takes in turn is not left held.

Either would lose every later write: of this process ("cannot start a transaction within a
transaction": pushes, deletes and the decision log all refused until a restart), or of every
other worker and `trustyard gc` (waiting forever for the lock)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from storage.layout import DataLayout
from storage.metadata import MetadataDB, open_metadata
from storage.metadata.sqlite.connection import bump_evidence

#: Only turns a hang into a failure.
PATIENCE = 30.0


async def _handles(data_dir: Path, count: int) -> list[MetadataDB]:
    path = DataLayout(data_dir).database
    return [await open_metadata(path) for _ in range(count)]


async def _bump(db: MetadataDB) -> None:
    """One write through `transaction()` (the writes that are not group-committed jobs)."""
    async with db.transaction() as conn:  # type: ignore[attr-defined]
        await bump_evidence(conn, "team/app")


async def _writer_idle(db: MetadataDB) -> None:
    """Wait until what was queued on `db`'s writer thread has run (it runs in order)."""
    await db._writer._execute(lambda: None)  # type: ignore[attr-defined]


async def test_a_write_cancelled_while_it_begins_leaves_no_transaction_open(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (db,) = await _handles(data_dir, 1)
    # Another process holds SQLite's write lock: our BEGIN waits for it on the writer's thread.
    holder = sqlite3.connect(DataLayout(data_dir).database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    writer: Any = db._writer  # type: ignore[attr-defined]
    execute = writer.execute
    beginning = asyncio.Event()

    def noting_begin(sql: str, *args: Any) -> Any:
        if sql == "BEGIN IMMEDIATE":
            beginning.set()
        return execute(sql, *args)

    monkeypatch.setattr(writer, "execute", noting_begin)
    try:
        async with asyncio.timeout(PATIENCE):
            cut_short = asyncio.create_task(_bump(db))
            await beginning.wait()
            cut_short.cancel()
            holder.rollback()  # the other process is done: our BEGIN runs now, on the thread
            with pytest.raises(asyncio.CancelledError):
                await cut_short
            # The next writes begin, commit and are read back.
            await _bump(db)
            await _bump(db)
            assert await db.evidence_version("team/app") == 2
    finally:
        holder.close()
        await db.close()


async def test_a_write_cancelled_while_it_waits_for_the_write_lock_releases_it(
    data_dir: Path,
) -> None:
    db, other = await _handles(data_dir, 2)
    try:
        async with asyncio.timeout(PATIENCE):
            async with other.transaction():  # type: ignore[attr-defined]
                # Another process writes: ours queues for the lock on its thread ...
                cut_short = asyncio.create_task(_bump(db))
                await asyncio.sleep(0)  # one loop turn: the task runs up to that wait
                cut_short.cancel()
            # ... and takes it once free, after the cancel: it must give it back at once.
            with pytest.raises(asyncio.CancelledError):
                await cut_short
            await _writer_idle(db)
            await _bump(other)
            await _bump(db)
            await _bump(other)
            assert await other.evidence_version("team/app") == 3
    finally:
        await db.close()  # first: closing its descriptor frees a lock it kept
        await other.close()
