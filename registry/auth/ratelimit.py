"""Failed-login limiting: too many failures for one user, or from one source, lock it for a while.

Failures are counted in a sliding window per user name and per source address. While either is
over its limit, logins for that user or from that source are refused before any password is
checked, so guessing gains nothing; the lock lifts as old failures leave the window.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class FailedLogins:
    """Sliding-window counters of failed logins per user and per source."""

    #: Keys tracked at most; the oldest are forgotten first (bounds memory under a spray).
    MAX_KEYS = 100_000

    def __init__(
        self,
        *,
        window: float,
        max_per_user: int,
        max_per_source: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_per_user = max_per_user
        self.max_per_source = max_per_source
        self.clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def retry_after(self, user: str, source: str) -> float:
        """Seconds until `user` from `source` may try again (0 when not locked)."""
        now = self.clock()
        waits = [
            self._wait(("user", user), self.max_per_user, now),
            self._wait(("source", source), self.max_per_source, now),
        ]
        return max(waits)

    def record_failure(self, user: str, source: str) -> None:
        """Count one failed login."""
        now = self.clock()
        for key in (("user", user), ("source", source)):
            if key not in self._failures and len(self._failures) >= self.MAX_KEYS:
                self._failures.pop(next(iter(self._failures)))
            self._failures.setdefault(key, deque()).append(now)

    def record_success(self, user: str) -> None:
        """A correct password clears the user's count (the source's stays)."""
        self._failures.pop(("user", user), None)

    def _wait(self, key: tuple[str, str], limit: int, now: float) -> float:
        times = self._failures.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0.0
        if len(times) < limit:
            return 0.0
        # Locked until enough failures age out to fall below the limit again.
        return times[len(times) - limit] + self.window - now
