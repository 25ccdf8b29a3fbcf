"""A promise of "within N seconds" between real server processes, checked on a machine that may
be too slow to keep any promise of time.

A replica notices a change another one made by reading a shared generation a few times a second
(`storage.metadata.generations`). How long a change takes to show on another replica is that
interval plus however long the machine lets the processes wait for a core: on a loaded two-core
runner a single request can take longer than the whole promise. The wait for the change times
each request it sends; when the change showed late *and* a single request of the wait took a
good part of the promise itself, the machine was too slow to tell whether the promise was kept:
that is said in a warning (the change did show, which is checked in any case). When the requests
were answered promptly and the change still showed late, the mechanism is too slow: a failure.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

#: A request of the wait that took this share of the promise means the machine, not the
#: mechanism, decided how long the change took to show.
TOO_SLOW_SHARE = 0.25


@dataclass
class Wait:
    """When a polled condition held (monotonic), and the slowest single poll on the way."""

    held_at: float
    slowest: float


async def poll_until(
    check: Callable[[], Awaitable[bool]], patience: float, what: str, interval: float = 0.01
) -> Wait:
    """Call `check` until it answers True (failing after `patience` seconds), timing each call."""
    deadline = time.monotonic() + patience
    slowest = 0.0
    while True:
        sent = time.monotonic()
        done = await check()
        answered = time.monotonic()
        slowest = max(slowest, answered - sent)
        if done:
            return Wait(answered, slowest)
        assert answered < deadline, f"{what}: not within {patience}s"
        await asyncio.sleep(interval)  # polling interval of the wait above


def check_within(since: float, waits: list[Wait], within: float, what: str) -> None:
    """Assert that every wait ended less than `within` seconds after `since`; when one did not
    while the machine was too slow to tell (a single request took `TOO_SLOW_SHARE` of `within`
    or more), warn instead, naming the numbers."""
    lag = max(w.held_at for w in waits) - since
    if lag < within:
        return
    slowest = max(w.slowest for w in waits)
    lags = [round(w.held_at - since, 3) for w in waits]
    assert slowest >= TOO_SLOW_SHARE * within, (
        f"{what} took {lag:.3f}s (each: {lags}), more than {within}s, although every request "
        f"of the wait was answered within {slowest:.3f}s"
    )
    warnings.warn(
        f"the machine was too slow to check that {what} takes under {within}s: it took "
        f"{lag:.3f}s, and a single request of the wait {slowest:.3f}s",
        stacklevel=2,
    )
