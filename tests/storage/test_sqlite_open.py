"""Opening the SQLite metadata file: processes opening one fresh file at once (`serve --workers`
on a new data directory, `trustyard gc` beside the server) all open it, and an open that fails
leaves nothing running that would keep the process from exiting."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from storage.metadata import SQLiteMetadata

PROCESSES = 6
ROUNDS = 100


def _open_each_round(root: str, barrier: Barrier, results: Any) -> None:
    """In a child process: for each round, wait for the others, then open and close that
    round's fresh file; report what failed."""

    async def rounds() -> list[str]:
        failures = []
        for number in range(ROUNDS):
            await asyncio.to_thread(barrier.wait, 60)
            try:
                db = await SQLiteMetadata.open(Path(root) / f"round-{number}" / "metadata.sqlite")
                await db.close()
            except Exception as exc:  # reported to the test, which names it
                failures.append(f"round {number}: {exc!r}")
        return failures

    results.put(asyncio.run(rounds()))


def test_processes_opening_one_fresh_file_at_once_all_open_it(tmp_path: Path) -> None:
    """Six processes open the same new file at the same instant, a hundred times over: every
    open succeeds and every process exits. (Before the setup took turns, about one round in
    forty had a process fail with "database is locked" while switching the file to WAL, and
    that process then hung at exit on the connection it left open.)"""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [
        context.Process(target=_open_each_round, args=(str(tmp_path), barrier, results))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        failures = [failure for _ in processes for failure in results.get(timeout=120)]
        for process in processes:
            process.join(30)
        assert failures == []
        assert [process.exitcode for process in processes] == [0] * PROCESSES
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    for number in range(ROUNDS):
        database = tmp_path / f"round-{number}" / "metadata.sqlite"
        with sqlite3.connect(database) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert connection.execute("SELECT count(*) FROM schema_version").fetchone() == (1,)


async def _threads() -> set[threading.Thread]:
    """The threads of this process, once the event loop's executor (which `open` uses to wait
    for the cross-process lock) has its one thread. The executor is given one thread at most: a
    pool adds a thread when a job arrives before its last job's thread has counted itself idle
    again (it does so only after the job's answer is handed over), and such an idle pool thread
    is not a connection left open."""
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
    await asyncio.to_thread(lambda: None)
    return set(threading.enumerate())


#: The refusal is kept while the threads are counted: its traceback holds the frames of the
#: open, so a connection the open did not close is not collected (aiosqlite would then stop
#: its thread) but stays open, as it does where a server keeps the exception to report it.
_KEPT_ALIVE = "threads left running while the refusal ({}) is kept"


def _still_running(before: set[threading.Thread]) -> list[threading.Thread]:
    """The threads started since `before` that have not ended within a few seconds (a closed
    connection's thread ends just after its `close` returns)."""
    started = set(threading.enumerate()) - before
    for thread in started:
        thread.join(10)
    return [thread for thread in started if thread.is_alive()]


async def test_a_file_that_is_not_a_database_is_refused_and_leaves_no_connection_open(
    tmp_path: Path,
) -> None:
    database = tmp_path / "metadata.sqlite"
    database.write_bytes(b"not a database, " * 512)
    before = await _threads()
    with pytest.raises(sqlite3.DatabaseError, match="not a database") as refused:
        await SQLiteMetadata.open(database)
    assert _still_running(before) == [], _KEPT_ALIVE.format(refused.tb)


async def test_a_newer_schema_is_refused_and_leaves_no_connection_open(tmp_path: Path) -> None:
    database = tmp_path / "metadata.sqlite"
    db = await SQLiteMetadata.open(database)
    await db.close()
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE schema_version SET version = version + 1")
    before = await _threads()
    with pytest.raises(RuntimeError, match="this Trustyard knows") as refused:
        await SQLiteMetadata.open(database)
    assert _still_running(before) == [], _KEPT_ALIVE.format(refused.tb)
