"""A robot never holds a console session.

Robot tokens are for clients (docker, CI jobs); the console is for people. A leaked CI token typed
into the console's login form must not become a browser session, even for a robot that
administers everything, and a session that names a robot (however it came to exist) authenticates
nothing and is ended on sight.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from registry.auth import sessions
from registry.auth.service import AuthService
from registry.auth.sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE, SessionStore
from registry.auth.settings import AuthSettings
from tests.auth.conftest import PERMISSIONS, Accounts, auth_section, write_accounts
from tests.conftest import make_config

#: The robot `ci` may administer everything: its refusal is about what it is, not what it may do.
ROBOT_ADMIN = [*PERMISSIONS, {"namespace": "**", "groups": {"ci": "admin"}}]


@pytest.fixture
def accounts(data_dir: Path) -> Accounts:
    return write_accounts(data_dir)


async def test_a_robot_token_typed_into_the_login_form_makes_no_session(
    start_client: Any, accounts: Accounts
) -> None:
    client = await start_client(auth=auth_section(permissions=ROBOT_ADMIN))
    page = await client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text())[1]
    assert client.session.cookie_jar.filter_cookies(client.make_url("/"))[LOGIN_CSRF_COOKIE]
    resp = await client.post(
        "/console/login",
        data={"username": "ci", "password": accounts.robot_token, "csrf": csrf},
        allow_redirects=False,
    )
    assert resp.status == 403
    assert "Robots log in with tokens, not to the console." in await resp.text()
    assert SESSION_COOKIE not in resp.cookies
    assert (await client.get("/api/v1/repositories")).status == 401


def test_a_session_naming_a_robot_authenticates_nothing_and_ends(
    data_dir: Path, accounts: Accounts
) -> None:
    service = AuthService(
        AuthSettings.from_config(make_config(data_dir, auth=auth_section(permissions=ROBOT_ADMIN)))
    )
    robot = service.users.get("ci")
    assert robot is not None and robot.kind == "robot"
    app = web.Application()
    store = SessionStore()
    app[sessions.SESSIONS] = store
    # With the robot's own, current credential: only what it is refuses it.
    token, _ = store.create(robot.name, robot.credential)
    request = make_mocked_request(
        "GET", "/api/v1/repositories", headers={"Cookie": f"{SESSION_COOKIE}={token}"}, app=app
    )
    assert sessions.session_caller(request, service) is None
    assert store.get(token) is None
