"""Failed-login limits attacked at their edges: more failures than the limit (logins checked
at the same time all pass the lock check before any of them is counted) must keep the lock, and
the memory bound forgets exactly the oldest keys, never more than it must."""

from __future__ import annotations

import pytest

from registry.auth.ratelimit import FailedLogins


def limits(clock: list[float], **bounds: int) -> FailedLogins:
    return FailedLogins(
        window=60,
        max_per_user=bounds.get("user", 3),
        max_per_source=bounds.get("source", 100),
        clock=lambda: clock[0],
    )


@pytest.mark.parametrize("failures", [4, 5, 9])
def test_more_failures_than_the_limit_keep_the_lock(failures: int) -> None:
    """Concurrent guesses are each counted after their (slow) password check: the count can pass
    the limit, and the user must stay locked until enough of them age out."""
    now = [1000.0]
    limited = limits(now)
    for i in range(failures):
        now[0] = 1000.0 + i
        limited.record_failure("alice", f"10.0.0.{i}")
    # Locked until the failure that brings the count back under 3 ages out.
    oldest_kept = 1000.0 + failures - 3
    assert limited.retry_after("alice", "10.9.9.9") == pytest.approx(oldest_kept + 60 - now[0])
    now[0] = oldest_kept + 60 - 0.5
    assert limited.retry_after("alice", "10.9.9.9") == pytest.approx(0.5)
    now[0] = oldest_kept + 60
    assert limited.retry_after("alice", "10.9.9.9") == 0


def test_more_failures_from_one_source_than_its_limit_keep_it_locked() -> None:
    now = [1000.0]
    limited = limits(now, user=100, source=2)
    for user in ("u1", "u2", "u3"):
        limited.record_failure(user, "10.0.0.1")
    assert limited.retry_after("anyone", "10.0.0.1") == pytest.approx(60)


def test_the_key_bound_forgets_the_oldest_key_only_when_full() -> None:
    now = [1000.0]
    limited = limits(now, user=1, source=100)
    limited.MAX_KEYS = 3
    limited.record_failure("alice", "10.0.0.1")  # two keys: alice, the source
    limited.record_failure("bob", "10.0.0.1")  # three: the bound, nothing forgotten yet
    assert limited.retry_after("alice", "10.9.9.9") == pytest.approx(60)
    assert limited.retry_after("bob", "10.9.9.9") == pytest.approx(60)
    limited.record_failure("carol", "10.0.0.1")  # a fourth key: the oldest (alice) goes
    assert limited.retry_after("alice", "10.9.9.9") == 0
    assert limited.retry_after("bob", "10.9.9.9") == pytest.approx(60)
    assert limited.retry_after("carol", "10.9.9.9") == pytest.approx(60)
