"""`Coordination` on PostgreSQL: every process and replica sharing the database.

A named lock is a session advisory lock (`pg_try_advisory_lock` on the key's 64-bit hash)
taken on one of a few connections this process keeps for its locks (the key's hash picks
which), outside the pool: a holder never takes a pooled connection from the reads and writes it
waits on, and however many locks are held, those few connections hold them. The server drops
them when their connection goes (the process died, the network went, an administrator ended the
backend): the connection is then opened afresh by the next lock taken on it. A holder whose lock
went this way must not go on as if it held it: `confirm`, called just before a holder commits
what the lock guards, asks the lock's connection (one round trip) and raises `LockLost` when the
connection is gone or fails, so the change is refused instead of committed unguarded; a release
finding the lock gone is logged.
Locks are tried without blocking (a waiting `pg_advisory_lock` would hold its connection for
every other key) and retried until taken.

A trigger on `shared_generations` announces every moved generation on the channel
`trustyard_generations` (delivered at the commit); `listen_generations` subscribes on a
connection of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Self

import asyncpg

from storage.errors import LockLost
from storage.metadata.coordination import KeyedLocks, Notice, key_hash, poll_lock
from storage.metadata.postgresql.connection import (
    WRITE_LOCK,
    PostgreSQLBase,
    _unavailable_when_lost,
)

log = logging.getLogger("storage.metadata.postgresql")

#: Connections kept for advisory locks per process: a lock's try and release are a round trip
#: each, one at a time per connection, so several let several pushes lock their tags at once.
LOCK_CONNECTIONS = 4

#: How long a lock's connection may take to answer `confirm` before the lock counts as lost.
CONFIRM_TIMEOUT = 10.0

#: The channel a moved shared generation is announced on (payload: the generation's name and
#: its new value, `<name> <generation>`; a name alone from a database whose function predates
#: the value, until a process of this version opens it).
CHANNEL = "trustyard_generations"

_NOTIFY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION trustyard_generation_moved() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.name || ' ' || NEW.generation);
    RETURN NEW;
END
$$ LANGUAGE plpgsql
"""
_NOTIFY_TRIGGER = (
    "CREATE TRIGGER trustyard_generation_moved AFTER INSERT OR UPDATE ON shared_generations "
    "FOR EACH ROW EXECUTE FUNCTION trustyard_generation_moved()"
)


class _Listening:
    """A connection of its own that receives the generation notices."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    def alive(self) -> bool:
        return not self.connection.is_closed()

    async def close(self) -> None:
        if not self.connection.is_closed():
            await self.connection.close()


class _LockLine:
    """One connection kept for advisory locks, used by one statement at a time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: asyncpg.Connection | None = None
        self.use = asyncio.Lock()

    async def take(self, number: int) -> asyncpg.Connection | None:
        """Try the lock once: the connection holding it, or None when another holds it."""
        async with self.use, _unavailable_when_lost(self.url):
            if self.connection is None or self.connection.is_closed():
                self.connection = await asyncpg.connect(self.url, timeout=10)
            if await self.connection.fetchval("SELECT pg_try_advisory_lock($1)", number):
                return self.connection
            return None

    async def release(self, number: int, taken_on: asyncpg.Connection) -> None:
        """Release the lock taken on `taken_on` (logged when it went with its connection)."""
        async with self.use:
            if taken_on is not self.connection or taken_on.is_closed():
                log.error("advisory lock %d was lost with its connection before release", number)
                return
            try:
                released = await taken_on.fetchval("SELECT pg_advisory_unlock($1)", number)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("releasing advisory lock %d failed: %s", number, exc)
                return
            if not released:
                log.error("advisory lock %d was not held at release", number)

    async def confirm(self, taken_on: asyncpg.Connection, key: str) -> None:
        """Raise `LockLost` unless the session a lock was taken on is still this line's and
        answers (a session's advisory locks last as long as the session)."""
        async with self.use:
            if taken_on is not self.connection or taken_on.is_closed():
                raise LockLost(key, "its connection to PostgreSQL was closed")
            try:
                await taken_on.fetchval("SELECT 1", timeout=CONFIRM_TIMEOUT)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("lock %r cannot be confirmed: %s", key, exc)
                raise LockLost(key, f"its connection to PostgreSQL failed: {exc}") from None

    async def close(self) -> None:
        """Close the connection (the server drops its locks)."""
        if self.connection is not None and not self.connection.is_closed():
            await self.connection.close()


class PostgreSQLCoordination(PostgreSQLBase):
    """`Coordination` on PostgreSQL (the shared generations are read by the SQLite group's
    statement, as every other read)."""

    _lines: list[_LockLine] | None = None
    _keyed: KeyedLocks | None = None
    #: The locks this process holds: their line and the connection each was taken on.
    _held: dict[str, tuple[_LockLine, asyncpg.Connection]] | None = None

    @classmethod
    async def open(cls, url: str) -> Self:
        """Connect, create (or check) the schema, and make sure a moved shared generation is
        announced (the trigger is created once, by whichever process starts first)."""
        db = await super().open(url)
        try:
            async with db._pool.acquire() as connection, connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                present = await connection.fetchval(
                    "SELECT 1 FROM pg_trigger WHERE tgname = 'trustyard_generation_moved' "
                    "AND tgrelid = 'shared_generations'::regclass"
                )
                # Replaced every time: a database made by an earlier version gets the value.
                await connection.execute(_NOTIFY_FUNCTION)
                if present is None:
                    await connection.execute(_NOTIFY_TRIGGER)
        except BaseException:
            await db.close()
            raise
        return db

    async def listen_generations(self, notice: Notice) -> _Listening | None:
        """Call `notice` at each generation notice, on a connection of its own."""
        connection = await asyncpg.connect(self.url, timeout=10)

        def received(_connection: object, _pid: int, _channel: str, payload: str) -> None:
            name, _, value = payload.rpartition(" ")
            if name and value.isdigit():
                notice(name, int(value))
            else:  # the name alone
                notice(payload, None)

        await connection.add_listener(CHANNEL, received)
        return _Listening(connection)

    @asynccontextmanager
    async def exclusive(self, key: str, *, wait: bool = True) -> AsyncIterator[bool]:
        """Hold the lock named `key` across every process and replica on this database."""
        if self._lines is None or self._keyed is None:
            self._lines = [_LockLine(self.url) for _ in range(LOCK_CONNECTIONS)]
            self._keyed = KeyedLocks()
            self._held = {}
        number = key_hash(key)
        if number == WRITE_LOCK:  # never the write transactions' lock (2**-64 of a chance)
            number -= 1
        # A key always uses the same line: its unlock must reach the session that locked it.
        line = self._lines[number % LOCK_CONNECTIONS]
        taken_on: asyncpg.Connection | None = None

        async def try_once() -> bool:
            nonlocal taken_on
            taken_on = await line.take(number)
            return taken_on is not None

        async with self._keyed.hold(key, wait=wait) as held:
            if not held or not await poll_lock(try_once, wait=wait):
                yield False
                return
            assert taken_on is not None and self._held is not None
            self._held[key] = (line, taken_on)
            try:
                yield True
            finally:
                del self._held[key]
                await line.release(number, taken_on)

    async def confirm(self, key: str) -> None:
        """Raise `LockLost` unless this process still holds `key` (its lock connection still
        answers)."""
        held = (self._held or {}).get(key)
        if held is None:
            raise LockLost(key, "it is not held")
        line, taken_on = held
        await line.confirm(taken_on, key)

    async def close(self) -> None:
        """Close the lock connections (dropping their locks), then the pool."""
        for line in self._lines or ():
            await line.close()
        await super().close()
