"""Console login with auth on: the viewer role, session cookies, CSRF on login and logout, and
what a session cookie may never do (push, delete, pull, administer)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient

from registry.auth.sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from registry.auth.users import UserStore
from tests.auth.conftest import PERMISSIONS, add_test_user, auth_section, basic, write_accounts
from tests.oci import push_image

VIEWER_PASSWORD = "vera-secret-pw"


@pytest.fixture
async def authed(start_client: Any, data_dir) -> TestClient:
    accounts = write_accounts(data_dir)
    add_test_user(accounts.store, "vera", VIEWER_PASSWORD, ["auditors"])
    permissions = [*PERMISSIONS, {"namespace": "**", "groups": {"auditors": "viewer"}}]
    client = await start_client(
        auth=auth_section(permissions=permissions, rate_limit={"max_failures_per_user": 3})
    )
    olga = {"Authorization": basic("olga", "olga-secret-pw")}
    await push_image(_With(client, olga), "team-a/app", "1.0")
    return client


class _With:
    """Send one Authorization header with the push helper's requests."""

    def __init__(self, client: TestClient, headers: dict[str, str]) -> None:
        self.client, self.headers = client, headers

    async def post(self, path: str, **kw: Any) -> Any:
        return await self.client.post(path, headers=self.headers, **kw)

    async def put(self, path: str, **kw: Any) -> Any:
        return await self.client.put(path, headers={**self.headers, **kw.pop("headers", {})}, **kw)


async def login(client: TestClient, user: str, password: str, next_: str = "") -> Any:
    page = await client.get("/console/login", params={"next": next_} if next_ else None)
    assert page.status == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text())[1]
    return await client.post(
        "/console/login",
        data={"username": user, "password": password, "csrf": csrf, "next": next_},
        allow_redirects=False,
    )


async def test_pages_send_anonymous_callers_to_login_and_back(authed):
    page = "/console/decisions?outcome=deny&window=7d"
    resp = await authed.get(page, allow_redirects=False)
    assert resp.status == 303
    location = urlsplit(resp.headers["Location"])
    assert location.path == "/console/login" and parse_qs(location.query) == {"next": [page]}
    assert (await authed.get("/api/v1/health")).status == 401
    resp = await login(authed, "vera", VIEWER_PASSWORD, parse_qs(location.query)["next"][0])
    assert resp.status == 303 and resp.headers["Location"] == page
    assert (await authed.get("/api/v1/health")).status == 200


async def test_viewer_logs_in_and_reads_console_and_api_only(authed):
    resp = await login(authed, "vera", VIEWER_PASSWORD, "/console/health")
    assert resp.status == 303 and resp.headers["Location"] == "/console/health"
    cookie = resp.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert not cookie["secure"]  # plain HTTP here; under TLS it is Secure (test_browser)
    page = await authed.get("/console/health")
    assert page.status == 200 and "vera" in await page.text()
    assert (await authed.get("/api/v1/repositories")).status == 200
    # The viewer role reads and nothing else: no pull, no push, no /metrics.
    assert (await authed.get("/v2/team-a/app/manifests/1.0")).status == 401
    assert (await authed.get("/metrics")).status == 401
    resp = await authed.get("/v2/team-a/app/manifests/1.0", headers=_basic_vera())
    assert resp.status == 403
    resp = await authed.get("/api/v1/health", headers=_basic_vera())
    assert resp.status == 200
    resp = await authed.post("/api/v1/scans", headers=_basic_vera(), data=b"{}")
    assert resp.status == 401  # the webhook takes scanner credentials only


def _basic_vera() -> dict[str, str]:
    return {"Authorization": basic("vera", VIEWER_PASSWORD)}


async def test_session_cookie_never_authorizes_a_change(authed):
    await login(authed, "olga", "olga-secret-pw")
    assert (await authed.get("/console/library")).status == 200
    # olga administers everything, but her browser session cannot push or delete: a forged
    # cross-site request carrying the cookie is anonymous to /v2/.
    resp = await authed.post("/v2/team-a/app/blobs/uploads/")
    assert resp.status == 401
    resp = await authed.delete("/v2/team-a/app/manifests/1.0")
    assert resp.status == 401
    resp = await authed.get("/v2/team-a/app/manifests/1.0")
    assert resp.status == 401


async def test_developers_may_not_use_the_console(authed):
    resp = await login(authed, "alice", "alice-secret-pw")
    assert resp.status == 403
    assert "alice may not use the console" in await resp.text()
    assert SESSION_COOKIE not in resp.cookies
    alice = {"Authorization": basic("alice", "alice-secret-pw")}
    assert (await authed.get("/api/v1/health", headers=alice)).status == 403


async def test_login_needs_the_form_csrf_token_and_same_origin(authed):
    await authed.get("/console/login")
    resp = await authed.post(
        "/console/login",
        data={"username": "olga", "password": "olga-secret-pw", "csrf": "forged"},
        allow_redirects=False,
    )
    assert resp.status == 403 and SESSION_COOKIE not in resp.cookies
    page = await authed.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text())[1]
    resp = await authed.post(
        "/console/login",
        data={"username": "olga", "password": "olga-secret-pw", "csrf": csrf},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    )
    assert resp.status == 403 and SESSION_COOKIE not in resp.cookies


async def test_wrong_password_is_refused_and_counted(authed):
    for _ in range(3):
        resp = await login(authed, "olga", "wrong")
        assert resp.status == 401
        assert "incorrect username or password" in await resp.text()
        assert SESSION_COOKIE not in resp.cookies
    # The failed-login limit is the one /token keeps: now even the right password waits.
    resp = await login(authed, "olga", "olga-secret-pw")
    assert resp.status == 429
    assert "too many failed logins" in await resp.text()
    assert SESSION_COOKIE not in resp.cookies


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/x", "/console/\\evil", "/v2/x"]
)
async def test_login_never_redirects_off_the_console(authed, target):
    resp = await login(authed, "olga", "olga-secret-pw", target)
    assert resp.status == 303 and resp.headers["Location"] == "/console/library"


async def test_logout_needs_the_session_csrf_token(authed):
    await login(authed, "olga", "olga-secret-pw")
    page = await authed.get("/console/health")
    token = re.search(r'name="csrf" value="([^"]+)"', await page.text())[1]
    resp = await authed.post("/console/logout", data={"csrf": "forged"}, allow_redirects=False)
    assert resp.status == 403
    assert (await authed.get("/console/health", allow_redirects=False)).status == 200
    resp = await authed.post("/console/logout", data={"csrf": token}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/console/login"
    assert (await authed.get("/console/health", allow_redirects=False)).status == 303


async def test_a_removed_user_loses_the_session(authed, data_dir):
    await login(authed, "vera", VIEWER_PASSWORD)
    assert (await authed.get("/console/health", allow_redirects=False)).status == 200
    UserStore(data_dir / "auth" / "users.yaml").remove("vera")
    assert (await authed.get("/console/health", allow_redirects=False)).status == 303


@pytest.mark.parametrize("password", ["vera-new-secret", VIEWER_PASSWORD])
async def test_a_new_password_ends_the_session(authed, data_dir, password):
    """Set anew (the same password too: a new salt), by whoever holds the users file."""
    await login(authed, "vera", VIEWER_PASSWORD)
    assert (await authed.get("/console/health", allow_redirects=False)).status == 200
    UserStore(data_dir / "auth" / "users.yaml").add_user(
        "vera", password, ["auditors"], replace=True
    )
    assert (await authed.get("/console/health", allow_redirects=False)).status == 303
    assert (await authed.get("/api/v1/repositories")).status == 401
    resp = await login(authed, "vera", password)
    assert resp.status == 303
    assert (await authed.get("/console/health", allow_redirects=False)).status == 200


async def test_console_is_open_with_auth_off(client):
    resp = await client.get("/console/health")
    assert resp.status == 200
    text = await resp.text()
    assert "open registry" in text and "Log out" not in text
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    resp = await client.get("/console/login", allow_redirects=False)
    assert resp.status == 303
    assert LOGIN_CSRF_COOKIE not in resp.cookies
