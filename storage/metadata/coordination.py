"""Coordination between the processes and machines sharing one metadata database.

Several `trustyard serve` processes (workers on one machine, replicas on several) and the
garbage collector may use one database at once. What one of them decides must hold for all:

* **Named locks** (`exclusive`): held across every process on the database, each by one holder
  at a time. A tag's guard (`policies.gateway.PolicyGate.tag_guard`) holds `tag <repo> <tag>`
  from the policy check to the commit, so two replicas racing to create an immutable tag cannot
  both pass the check; a collection holds `gc`, so two never run at once. SQLite: a POSIX record
  lock on one byte of the file `<database>.locks` (a byte per key's hash) — released by the
  kernel when the process dies; PostgreSQL: a session advisory lock on a connection kept for
  locks — released by the server when the connection goes. A lock can thus be lost while its
  holder lives (PostgreSQL: the connection dropped): a holder `confirm`s it just before it
  commits what the lock guards, and refuses the change (`storage.errors.LockLost`) when it is
  gone.
* **Shared generations** (`generation`): a counter per kind of change, bumped in the
  transaction of the change (`shared_generations`, see `storage.layout`). Every process reads
  it a few times a second (`storage.metadata.generations.GenerationWatch`) and forgets what it
  remembered (evidence versions, the pull decisions keyed by them) when it moved. On PostgreSQL
  a trigger on the table also sends a notice (`NOTIFY`) at the commit, carrying the new value,
  which tells the readers at once without a read (`listen_generations`); the reads go on, for
  SQLite and for a lost listener.

* **Shared files** (`announce_files`, `live_files`): every serving process records, every few
  seconds, digests of the files it decides requests by (its policy, its users file) that are
  read from each machine's own disk; a replica can thus tell when another runs different ones
  (`registry.replica_files`).

Within one process, holders of one key also wait for each other here (`KeyedLocks`): a POSIX
lock or a PostgreSQL session lock is the process's, not the coroutine's.
"""

from __future__ import annotations

import asyncio
import hashlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

#: The first and the longest pause between two tries of a lock another process holds.
FIRST_RETRY = 0.002
LONGEST_RETRY = 0.05

#: Told a shared generation's name and its new value (None: not told, to be read).
Notice = Callable[[str, int | None], None]


def tag_key(repository: str, tag: str) -> str:
    """The lock name of a tag (names and tags hold no space: the grammar forbids it)."""
    return f"tag {repository} {tag}"


def upload_key(upload_id: str) -> str:
    """The lock name of an upload session: held by the one request appending to it or finishing
    it, whichever process serves that request, and by whatever removes its bytes (a
    cancellation, a stale-upload sweep)."""
    return f"upload {upload_id}"


#: The lock name of garbage collection.
GC_KEY = "gc"


def key_hash(key: str) -> int:
    """A lock name as a signed 64-bit number (PostgreSQL's advisory lock key, a lock file's byte
    offset once made positive)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


class KeyedLocks:
    """In-process locks by name, kept only while someone holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: str, *, wait: bool = True) -> AsyncIterator[bool]:
        """Hold `key` in this process; without `wait`, yield False at once when it is held."""
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (asyncio.Lock(), [0])
        lock, users = entry
        if not wait and lock.locked():
            if users[0] == 0:
                del self._locks[key]
            yield False
            return
        users[0] += 1
        try:
            async with lock:
                yield True
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]


async def poll_lock(try_once: Callable[[], Awaitable[bool]], *, wait: bool) -> bool:
    """Call `try_once()` (whether the lock was taken) until it succeeds, pausing a little
    longer each time (another process holds it; its release wakes nobody here); without
    `wait`, try once."""
    pause = FIRST_RETRY
    while True:
        if await try_once():
            return True
        if not wait:
            return False
        await asyncio.sleep(pause)
        pause = min(LONGEST_RETRY, pause * 2)


class Coordination(ABC):
    """Locks and change counters shared by every process using the database."""

    @abstractmethod
    def exclusive(self, key: str, *, wait: bool = True) -> AbstractAsyncContextManager[bool]:
        """Hold the lock named `key` across every process on this database while the block
        runs; yields True. Without `wait`, yields False at once (holding nothing) when another
        holder has it."""

    @abstractmethod
    async def confirm(self, key: str) -> None:
        """Raise `storage.errors.LockLost` unless this process still holds the lock `key` it
        took with `exclusive` (a holder calls it just before it commits what the lock guards)."""

    @abstractmethod
    async def generation(self, name: str) -> int:
        """The shared generation `name` ('evidence'): it moves whenever such a change commits,
        whichever process made it (0 before the first)."""

    @abstractmethod
    async def announce_files(self, instance: str, files: dict[str, str], now: float) -> None:
        """Record that serving process `instance` runs `files` (name -> digest) as of `now`,
        and forget processes not heard of for a day."""

    @abstractmethod
    async def live_files(self, since: float) -> list[InstanceFiles]:
        """Every serving process heard of since `since`, with the files it runs."""

    @abstractmethod
    async def forget_instance(self, instance: str) -> None:
        """Drop what `instance` announced (it stops)."""

    @abstractmethod
    async def listen_generations(self, notice: Notice) -> Listener | None:
        """Have `notice(name, generation)` called as soon as a shared generation moves (at the
        commit of the change, by any process), with its new value (None when the database does
        not say it: read it), while the returned listener is alive; None where the engine
        cannot tell (SQLite: readers poll `generation`)."""


@dataclass(frozen=True)
class InstanceFiles:
    """What one serving process said it runs, and when it last said so."""

    instance: str
    files: dict[str, str]
    seen_at: float


class Listener(Protocol):
    """A subscription to the database's change notices (`listen_generations`)."""

    def alive(self) -> bool:
        """Whether notices still arrive (False once its connection is gone)."""
        ...

    async def close(self) -> None:
        """Stop listening."""
        ...
