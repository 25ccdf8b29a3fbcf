"""Who holds a named lock of a shared metadata database, seen from outside without taking it.

A test that waits for a replica to be inside a locked section must not try the lock itself: the
replica, arriving at that instant, would find it held by the test. So the holder is looked up:
on SQLite with `F_GETLK` on the lock file's byte (`storage.metadata.sqlite.coordination`), on
PostgreSQL in `pg_locks` (a 64-bit advisory key is split into `classid` and `objid`).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg

from storage.layout import DataLayout
from storage.metadata.coordination import key_hash
from storage.metadata.sqlite.coordination import _OFFSETS

T = TypeVar("T")

#: Linux's `struct flock` on 64-bit machines: type, whence, start, length, pid (and padding).
_FLOCK = "hhqqi4x"


def _sqlite_holder(data_dir: Path, key: str) -> int | None:
    """The pid of the process holding `key` on the SQLite database of `data_dir`, or None."""
    path = f"{DataLayout(data_dir).database}.locks"
    if not os.path.exists(path):
        return None
    offset = key_hash(key) % _OFFSETS
    fd = os.open(path, os.O_RDWR)
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    finally:
        os.close(fd)
    kind, _, _, _, pid = struct.unpack(_FLOCK, answer)
    return None if kind == fcntl.F_UNLCK else pid


async def backend_holding(url: str, key: str) -> int | None:
    """The PostgreSQL backend pid holding the advisory lock `key`, or None."""
    number = key_hash(key) & (2**64 - 1)
    connection = await asyncpg.connect(url)
    try:
        pid: int | None = await connection.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND objsubid = 1 AND classid = $1 AND objid = $2",
            number >> 32,
            number & 0xFFFFFFFF,
        )
    finally:
        await connection.close()
    return pid


async def lock_holder(data_dir: Path, metadata_url: str | None, key: str) -> int | None:
    """Who holds the lock `key` (a process pid on SQLite, a backend pid on PostgreSQL)."""
    if metadata_url is None:
        return _sqlite_holder(data_dir, key)
    return await backend_holding(metadata_url, key)


async def lose_tag_lock_during(
    url: str, key: str, push: Callable[[], Awaitable[T]], patience: float
) -> asyncio.Task[T]:
    """Start `push` while the `tags` table is held, so that its policy check waits there holding
    the tag's lock `key`; end the backend that holds the lock, wait until the lock is gone, then
    let the push go on. Returns the push, not yet answered."""
    hold = await asyncpg.connect(url)
    try:
        transaction = hold.transaction()
        await transaction.start()
        await hold.execute("LOCK TABLE tags IN ACCESS EXCLUSIVE MODE")
        task = asyncio.ensure_future(push())
        deadline = time.monotonic() + patience
        while (backend := await backend_holding(url, key)) is None:
            assert time.monotonic() < deadline, "the push never took the tag's lock"
            assert not task.done(), task
            await asyncio.sleep(0.01)
        assert await hold.fetchval("SELECT pg_terminate_backend($1)", backend)
        # Watched in `pg_locks`, read afresh by each query (`pg_stat_activity` is read once per
        # transaction: inside `hold`'s, a backend seen alive stays alive). Once it is gone,
        # another replica could take the lock.
        while await backend_holding(url, key) is not None:
            assert time.monotonic() < deadline, "the lock's backend kept the lock"
            await asyncio.sleep(0.01)
        await transaction.rollback()
    finally:
        await hold.close()
    return task
