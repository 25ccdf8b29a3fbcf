"""The bound on how long an upstream may take to accept a connection (`connect_timeout`),
counted in the upstream's silence rather than in this process's pauses.

A deadline is a timer on the event loop, and a timer runs only when the loop does. When this
process is held up (a garbage collection of a large heap, a machine too busy to run it, work
holding the loop) the kernel still completes a connect to a live upstream; once the process
runs again, the finished connect and the deadline that passed meanwhile are taken in by the
same turn of the loop, and the deadline goes first: the pull failed with "timed out" although
the upstream had answered at once. So a deadline whose timer runs late (by more than
`PAUSE_TOLERANCE`) was passed while this process was held up, not while it listened: the
upstream is given the time back, and the connect, finished by then, is taken in first. A
deadline whose timer runs on time was passed with the loop running and no connection made:
that is the upstream's silence, and the wait ends (`expired`).

The bound spans what connecting takes: resolving the name, TCP and, for `https`, TLS. A pooled
connection needs none.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace

import aiohttp

#: A deadline's timer that runs later than this after its time means this process was held up
#: at the deadline (a healthy loop runs timers within milliseconds, a busy machine within tens).
PAUSE_TOLERANCE = 0.05


class ConnectDeadline:
    """One request's connect bound: armed when a new connection is started, disarmed once it
    is made, and (`expired`) ending the request when the upstream let it run out."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.expired = False
        #: Times the deadline was passed while this process was held up (given back).
        self.waited_out = 0
        self._loop = asyncio.get_running_loop()
        self._scope: asyncio.Timeout | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    @contextlib.asynccontextmanager
    async def bounding(self) -> AsyncIterator[None]:
        """Run the request inside; TimeoutError out of it once the deadline expired."""
        async with asyncio.timeout(None) as scope:
            self._scope = scope
            try:
                yield
            finally:
                self.disarm()
                self._scope = None

    def arm(self) -> None:
        """A new connection is being made: the upstream has `limit` seconds to accept it."""
        self.disarm()
        self._due = self._loop.time() + self.limit
        self._timer = self._loop.call_at(self._due, self._check)

    def disarm(self) -> None:
        """The connection is made (or the request ended)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        now = self._loop.time()
        late = now - self._due
        if late > PAUSE_TOLERANCE:
            # Held up past the deadline: what the upstream did meanwhile is taken in first.
            self.waited_out += 1
            self._due = now + late
            self._timer = self._loop.call_at(self._due, self._check)
            return
        self._timer = None
        self.expired = True
        if self._scope is not None:
            self._scope.reschedule(now)


def _on_deadline(act: Callable[[ConnectDeadline], None]) -> Callable[..., Awaitable[None]]:
    """A tracing hook applying `act` to the request's `ConnectDeadline` (its
    `trace_request_ctx`), when it has one."""

    async def hook(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: object
    ) -> None:
        deadline = context.trace_request_ctx
        if isinstance(deadline, ConnectDeadline):
            act(deadline)

    return hook


def connect_tracing() -> aiohttp.TraceConfig:
    """The session's tracing that arms a request's `ConnectDeadline` (its
    `trace_request_ctx`) while a new connection is made."""
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_start.append(_on_deadline(ConnectDeadline.arm))
    trace.on_connection_create_end.append(_on_deadline(ConnectDeadline.disarm))
    return trace
