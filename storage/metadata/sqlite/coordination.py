"""`Coordination` on SQLite: the processes of one machine sharing the database file.

A named lock is a POSIX record lock (`fcntl.lockf`) on one byte of `<database>.locks`, at the
key's hash: the kernel keeps it per process and drops it when the process dies, so a killed
server never leaves a tag locked. The file stays empty (a lock past the end of a file is
allowed). Locks are tried without blocking (the event loop never waits in the kernel) and
retried until taken.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from storage.metadata.coordination import (
    InstanceFiles,
    KeyedLocks,
    Listener,
    Notice,
    key_hash,
    poll_lock,
)
from storage.metadata.sqlite.connection import SQLiteBase

#: Processes not heard of for this long are forgotten (seconds).
FORGET_AFTER = 86400.0

#: Byte offsets of the lock file: 2**62 is far inside what Linux accepts for a record lock.
_OFFSETS = 1 << 62


#: This process's lock file per database (by real path): one descriptor, never closed, and one
#: set of in-process locks, shared by every handle of the process on that database.
_LOCK_FILES: dict[str, tuple[int, int, KeyedLocks]] = {}


def _lock_file(database: str) -> tuple[int, KeyedLocks]:
    # Closing any descriptor of the file would drop every lock this process holds on it, so a
    # handle never opens (or closes) one of its own; a forked worker opens its own (record locks
    # are not inherited).
    path = os.path.realpath(f"{database}.locks")
    entry = _LOCK_FILES.get(path)
    if entry is None or entry[0] != os.getpid():
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        entry = _LOCK_FILES[path] = (os.getpid(), fd, KeyedLocks())
    return entry[1], entry[2]


class SQLiteCoordination(SQLiteBase):
    """`Coordination` on SQLite."""

    @asynccontextmanager
    async def exclusive(self, key: str, *, wait: bool = True) -> AsyncIterator[bool]:
        """Hold the lock named `key` across the processes on this database file."""
        assert self.path is not None
        fd, keyed = _lock_file(str(self.path))
        offset = key_hash(key) % _OFFSETS

        async def try_once() -> bool:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
            except (BlockingIOError, PermissionError):
                return False
            return True

        async with keyed.hold(str(offset), wait=wait) as held:
            if not held or not await poll_lock(try_once, wait=wait):
                yield False
                return
            try:
                yield True
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)

    async def confirm(self, key: str) -> None:
        """Nothing to ask: a record lock lasts as long as the process's lock file descriptor,
        which is never closed (only the process's death drops it, and its holder with it)."""

    async def listen_generations(self, notice: Notice) -> Listener | None:
        """None: SQLite sends no notices; readers poll `generation`."""
        return None

    async def announce_files(self, instance: str, files: dict[str, str], now: float) -> None:
        """Record the files `instance` runs (a heartbeat); forget the long silent."""
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO replica_files (instance, files, seen_at) VALUES (?, ?, ?) "
                "ON CONFLICT (instance) DO UPDATE SET files = excluded.files, "
                "seen_at = excluded.seen_at",
                (instance, json.dumps(files, sort_keys=True), now),
            )
            await db.execute("DELETE FROM replica_files WHERE seen_at < ?", (now - FORGET_AFTER,))

    async def live_files(self, since: float) -> list[InstanceFiles]:
        """The processes heard of since `since`."""
        rows = await self._all(
            "SELECT instance, files, seen_at FROM replica_files WHERE seen_at >= ? "
            "ORDER BY instance",
            (since,),
        )
        return [InstanceFiles(row[0], json.loads(row[1]), float(row[2])) for row in rows]

    async def forget_instance(self, instance: str) -> None:
        """Drop `instance`'s record."""
        async with self.transaction() as db:
            await db.execute("DELETE FROM replica_files WHERE instance = ?", (instance,))

    async def generation(self, name: str) -> int:
        """The shared generation `name` (0 before its first change)."""
        row = await self._one("SELECT generation FROM shared_generations WHERE name = ?", (name,))
        return 0 if row is None else int(row[0])
