"""`Coordination` on PostgreSQL: every process and replica sharing the database.

A named lock is a session advisory lock (`pg_try_advisory_lock` on the key's 64-bit hash)
taken on one connection this process keeps for its locks, outside the pool: a holder never
takes a pooled connection from the reads and writes it waits on, and however many locks are
held, one connection holds them. The server drops them when that connection goes (the process
died, the network went): the lock connection is then opened afresh, and a holder whose lock was
lost this way is told by a failed release, logged. Locks are tried without blocking (a waiting
`pg_advisory_lock` would hold the one connection for every other key) and retried until taken.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Self

import asyncpg

from storage.metadata.coordination import KeyedLocks, key_hash, poll_lock
from storage.metadata.postgresql.connection import (
    WRITE_LOCK,
    PostgreSQLBase,
    _unavailable_when_lost,
)

log = logging.getLogger("storage.metadata.postgresql")

#: The channel a moved shared generation is announced on (payload: the generation's name).
CHANNEL = "trustyard_generations"

_NOTIFY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION trustyard_generation_moved() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.name);
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


class PostgreSQLCoordination(PostgreSQLBase):
    """`Coordination` on PostgreSQL (the shared generations are read by the SQLite group's
    statement, as every other read)."""

    _lock_connection: asyncpg.Connection | None = None
    _lock_use: asyncio.Lock | None = None
    _keyed: KeyedLocks | None = None

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
                if present is None:
                    await connection.execute(_NOTIFY_FUNCTION)
                    await connection.execute(_NOTIFY_TRIGGER)
        except BaseException:
            await db.close()
            raise
        return db

    async def listen_generations(self, wake: Callable[[], None]) -> _Listening | None:
        """Call `wake` at each generation notice, on a connection of its own."""
        connection = await asyncpg.connect(self.url, timeout=10)
        await connection.add_listener(CHANNEL, lambda *_: wake())
        return _Listening(connection)

    async def _locker(self) -> asyncpg.Connection:
        if self._lock_connection is None or self._lock_connection.is_closed():
            self._lock_connection = await asyncpg.connect(self.url, timeout=10)
        return self._lock_connection

    @asynccontextmanager
    async def exclusive(self, key: str, *, wait: bool = True) -> AsyncIterator[bool]:
        """Hold the lock named `key` across every process and replica on this database."""
        if self._keyed is None:
            self._keyed = KeyedLocks()
            self._lock_use = asyncio.Lock()
        assert self._lock_use is not None
        number = key_hash(key)
        if number == WRITE_LOCK:  # never the write transactions' lock (2**-64 of a chance)
            number -= 1
        use = self._lock_use

        async def try_once() -> bool:
            async with use, _unavailable_when_lost(self.url):
                connection = await self._locker()
                return bool(await connection.fetchval("SELECT pg_try_advisory_lock($1)", number))

        async with self._keyed.hold(key, wait=wait) as held:
            if not held or not await poll_lock(try_once, wait=wait):
                yield False
                return
            taken_on = self._lock_connection
            try:
                yield True
            finally:
                await self._release(number, taken_on)

    async def _release(self, number: int, taken_on: asyncpg.Connection | None) -> None:
        assert self._lock_use is not None
        async with self._lock_use:
            if taken_on is not self._lock_connection or taken_on is None or taken_on.is_closed():
                log.error("advisory lock %d was lost with its connection before release", number)
                return
            try:
                released = await taken_on.fetchval("SELECT pg_advisory_unlock($1)", number)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("releasing advisory lock %d failed: %s", number, exc)
                return
            if not released:
                log.error("advisory lock %d was not held at release", number)

    async def close(self) -> None:
        """Close the lock connection (dropping its locks), then the pool."""
        if self._lock_connection is not None and not self._lock_connection.is_closed():
            await self._lock_connection.close()
        await super().close()
