"""Noticing changes other processes made: the shared generations, read a few times a second.

A process remembers what it read from the database to decide quickly (a repository's evidence
version, and the pull decisions keyed by it). A change it made itself it forgets at once; a
change another worker or replica made reaches it here: `GenerationWatch` reads the shared
generation (one row by primary key) every `interval` and calls `on_change` when it moved, so a
signature pushed to one replica lifts a quarantine on every other within about `interval`.
Where the database sends notices of a moved generation (PostgreSQL's `NOTIFY`), a notice
carries the new value: `on_change` is called as soon as it arrives, without a read (a read per
notice was a read per commit of every process, 7% of a PostgreSQL replica's loop under
pushes); a notice without the value is read at once; notices of other generations are not
this watch's. The reads every `interval` go on in case a notice is lost. A change is never
missed: whatever sets the remembered value to a new one (a read, a notice) calls `on_change`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from storage.metadata.coordination import Coordination, Listener

log = logging.getLogger(__name__)

#: How often the generation is read: one tiny read per process, never one per request.
INTERVAL = 0.25
#: How long to wait before subscribing again to notices after a failure.
LISTEN_RETRY = 5.0


class GenerationWatch:
    """Calls `on_change` whenever the shared generation `name` moves (by any process)."""

    def __init__(
        self,
        db: Coordination,
        name: str,
        on_change: Callable[[], None],
        *,
        interval: float = INTERVAL,
    ) -> None:
        self.db = db
        self.name = name
        self.on_change = on_change
        self.interval = interval
        self._seen: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()
        self._listener: Listener | None = None
        self._listen_after = 0.0  # when to try listening again after a failure

    async def check(self) -> bool:
        """Read the generation once; call `on_change` (and say so) when it moved since the last
        read (or when there was none: the first read, or the first after a failed one, as a
        change may have gone unseen)."""
        generation = await self.db.generation(self.name)
        moved = generation != self._seen
        self._seen = generation
        if moved:
            self.on_change()
        return moved

    def _notice(self, name: str, generation: int | None) -> None:
        """A notice that the shared generation `name` moved (to `generation` when told)."""
        if name != self.name:
            return
        if generation is None:
            self._woken.set()  # read it now
            return
        if generation != self._seen:
            self._seen = generation
            self.on_change()

    def start(self) -> None:
        """Start watching in the background."""
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    async def _listen(self) -> None:
        """Subscribe to the database's notices where it sends them (PostgreSQL), again after
        the subscription was lost (at most every `LISTEN_RETRY` seconds)."""
        if self._listener is not None and self._listener.alive():
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._listen_after:
            return
        self._listen_after = loop.time() + LISTEN_RETRY
        try:
            self._listener = await self.db.listen_generations(self._notice)
        except Exception as exc:
            log.warning(
                "listening for shared changes failed (reading every %gs): %s", self.interval, exc
            )
            self._listener = None

    async def _run(self) -> None:
        while True:
            await self._listen()
            self._woken.clear()
            try:
                await self.check()
            except Exception as exc:
                # The database is away: what was remembered may be stale, so forget it (the
                # next decision reads afresh, and fails closed if the database is still away).
                log.warning("reading shared generation %s failed: %s", self.name, exc)
                self._seen = None
                self.on_change()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._woken.wait()
