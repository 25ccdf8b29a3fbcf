"""Console sessions attacked at their edges: a session used one instant past its idle time or its
lifetime, the login flood bound (the least recently used session goes, the one in use stays),
CSRF tokens that are empty on either side, and origins that only start like ours."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from registry.auth import sessions
from registry.auth.sessions import SessionStore, csrf_matches, same_origin


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1_000_000.0]
    monkeypatch.setattr(sessions.time, "time", lambda: now[0])
    return now


def test_a_session_idle_past_its_limit_ends(clock: list[float]) -> None:
    store = SessionStore(idle=10, lifetime=1000)
    token, _ = store.create("alice", "g1")
    clock[0] += 10
    assert store.get(token) is not None  # exactly the idle time: still alive, and refreshed
    clock[0] += 10
    assert store.get(token) is not None
    clock[0] += 10.001
    assert store.get(token) is None
    clock[0] -= 10.001  # and it was ended, not kept for a clock that goes back
    assert store.get(token) is None


def test_a_session_in_use_ends_at_its_lifetime(clock: list[float]) -> None:
    store = SessionStore(idle=10, lifetime=50)
    start = clock[0]
    token, _ = store.create("alice", "g1")
    while clock[0] < start + 50:
        clock[0] = min(clock[0] + 9, start + 50)
        assert store.get(token) is not None  # busy, up to and including the lifetime
    clock[0] = start + 50.001
    assert store.get(token) is None


def test_the_least_recently_used_session_goes_first_at_the_bound(
    clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 2)
    store = SessionStore()
    first, _ = store.create("alice", "g1")
    second, _ = store.create("bob", "g1")
    assert store.get(first) is not None  # first is now the most recently used
    third, _ = store.create("carol", "g1")
    assert store.get(second) is None
    assert store.get(first) is not None and store.get(third) is not None


def test_a_logout_ends_only_that_session(clock: list[float]) -> None:
    store = SessionStore()
    first, _ = store.create("alice", "g1")
    second, _ = store.create("alice", "g1")
    store.end(first)
    assert store.get(first) is None and store.get(second) is not None


@pytest.mark.parametrize(
    ("expected", "given", "matches"),
    [
        ("token", "token", True),
        ("token", "tokem", False),
        ("token", "", False),
        ("", "", False),
        (None, "token", False),
        ("token", None, False),
        (None, None, False),
    ],
)
def test_a_csrf_token_matches_only_an_equal_non_empty_one(
    expected: str | None, given: str | None, matches: bool
) -> None:
    assert csrf_matches(expected, given) is matches


@pytest.mark.parametrize(
    ("headers", "ours"),
    [
        ({}, True),
        ({"Origin": "http://registry.example:5000"}, True),
        ({"Referer": "http://registry.example:5000/console/login"}, True),
        ({"Origin": "http://registry.example:50001"}, False),
        ({"Origin": "http://registry.example:5000.evil.example"}, False),
        ({"Referer": "http://registry.example:5000@evil.example/"}, False),
        ({"Origin": "https://registry.example:5000"}, False),
        ({"Origin": "http://evil.example", "Referer": "http://registry.example:5000/"}, False),
        ({"Origin": "null"}, False),
    ],
)
def test_only_this_servers_origin_is_the_same_origin(headers: dict[str, str], ours: bool) -> None:
    request = make_mocked_request(
        "POST", "/console/login", headers={"Host": "registry.example:5000", **headers}
    )
    assert same_origin(request) is ours


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/console/logout"),  # methods sorting before and after POST
        ("PATCH", "/console/logout"),
        ("OPTIONS", "/console/logout"),
        ("CONNECT", "/console/logout"),
        ("PUT", "/console/logout"),
        ("TRACE", "/console/logout"),
        ("POST", "/console/login"),
        ("POST", "/api/v1/users"),
        ("DELETE", "/api/v1/users/alice"),
        ("GET", "/v2/team-a/app/manifests/1.0"),
    ],
)
def test_a_session_cookie_authenticates_no_unsafe_request_but_the_logout_post(
    clock: list[float], method: str, path: str
) -> None:
    """Refused before the session is even looked at (its idle timer is not refreshed)."""
    from aiohttp import web

    app = web.Application()
    store = SessionStore()
    app[sessions.SESSIONS] = store
    token, session = store.create("alice", "g1")
    clock[0] += 5
    request = make_mocked_request(
        method, path, headers={"Cookie": f"{sessions.SESSION_COOKIE}={token}"}, app=app
    )
    assert sessions.session_caller(request, None) is None  # type: ignore[arg-type]
    assert session.last_used == clock[0] - 5


@pytest.mark.parametrize("authorization", ["Basic Ym9iOmJvYi1zZWNyZXQtcHc=", "Bearer x"])
def test_an_authorization_header_decides_even_with_a_session_cookie(
    clock: list[float], authorization: str
) -> None:
    """A request carrying both is the header's caller (or refused as the header says): the
    cookie never stands in for, or beside, the credentials a client sent."""
    from aiohttp import web

    app = web.Application()
    store = SessionStore()
    app[sessions.SESSIONS] = store
    token, session = store.create("olga", "g1")
    clock[0] += 5
    request = make_mocked_request(
        "GET",
        "/api/v1/health",
        headers={"Cookie": f"{sessions.SESSION_COOKIE}={token}", "Authorization": authorization},
        app=app,
    )
    assert sessions.session_caller(request, None) is None  # type: ignore[arg-type]
    assert session.last_used == clock[0] - 5
