"""`Coordination` on SQLite: the processes of one machine sharing the database file.

A named lock is a POSIX record lock (`fcntl.lockf`) on one byte of `<database>.locks`, at the
key's hash: the kernel keeps it per process and drops it when the process dies, so a killed
server never leaves a tag locked. The file stays empty (a lock past the end of a file is
allowed). Locks are tried without blocking (the event loop never waits in the kernel) and
retried until taken.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from storage.metadata.coordination import KeyedLocks, key_hash, poll_lock
from storage.metadata.sqlite.connection import SQLiteBase

#: Byte offsets of the lock file: 2**62 is far inside what Linux accepts for a record lock.
_OFFSETS = 1 << 62


class SQLiteCoordination(SQLiteBase):
    """`Coordination` on SQLite."""

    _lock_fd: int | None = None
    _lock_pid: int | None = None
    _keyed: KeyedLocks | None = None

    def _lock_file(self) -> int:
        # Opened once per process (a forked worker opens its own: record locks are not
        # inherited) and never closed while the process runs, because closing any descriptor of
        # the file would drop every lock this process holds on it.
        if self._lock_fd is None or self._lock_pid != os.getpid():
            assert self.path is not None
            self._lock_fd = os.open(f"{self.path}.locks", os.O_RDWR | os.O_CREAT, 0o600)
            self._lock_pid = os.getpid()
            self._keyed = KeyedLocks()
        return self._lock_fd

    @asynccontextmanager
    async def exclusive(self, key: str, *, wait: bool = True) -> AsyncIterator[bool]:
        """Hold the lock named `key` across the processes on this database file."""
        fd = self._lock_file()
        assert self._keyed is not None
        offset = key_hash(key) % _OFFSETS

        async def try_once() -> bool:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
            except (BlockingIOError, PermissionError):
                return False
            return True

        async with self._keyed.hold(str(offset), wait=wait) as held:
            if not held or not await poll_lock(try_once, wait=wait):
                yield False
                return
            try:
                yield True
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)

    async def generation(self, name: str) -> int:
        """The shared generation `name` (0 before its first change)."""
        row = await self._one("SELECT generation FROM shared_generations WHERE name = ?", (name,))
        return 0 if row is None else int(row[0])
