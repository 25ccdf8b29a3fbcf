"""A users file the running registry cannot read (an edit by hand saved half-way, a file made
unreadable) refuses every request that needs it with 503 `UNAVAILABLE` and a message the client
can act on, never a 500 or a guess from an older copy: Basic logins, bearer tokens, `/token` (in
OAuth2 terms: `temporarily_unavailable`, not bad credentials) and console sessions. The log names
the file and why; nothing is counted as a failed login; once the file is whole again, the same
token and session work.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from registry.auth.service import USERS_UNREADABLE
from tests.auth.conftest import (
    PASSWORDS,
    Accounts,
    add_test_user,
    auth_section,
    basic,
    bearer,
    fetch_token,
    write_accounts,
)

BROKEN = "users:\n  alice: {password: [\n"


@pytest.fixture
def accounts(data_dir: Path) -> Accounts:
    written = write_accounts(data_dir)
    add_test_user(written.store, "vera", "vera-secret-pw", ["auditors"])
    return written


async def unavailable(resp: Any) -> None:
    assert resp.status == 503, await resp.text()
    body = await resp.json()
    assert body["errors"][0]["code"] == "UNAVAILABLE"
    assert body["errors"][0]["message"] == USERS_UNREADABLE


async def console_login(client: Any) -> None:
    page = await client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text())[1]
    resp = await client.post(
        "/console/login",
        data={"username": "vera", "password": "vera-secret-pw", "csrf": csrf},
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()


async def test_an_unreadable_users_file_refuses_with_503_until_it_is_whole_again(
    start_client: Any, accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    permissions = [
        *auth_section()["permissions"],
        {"namespace": "**", "groups": {"auditors": "viewer"}},
    ]
    client = await start_client(
        auth=auth_section(permissions=permissions, rate_limit={"max_failures_per_user": 1})
    )
    token = await fetch_token(client, "repository:team-a/app:pull", user="alice")
    await console_login(client)
    assert (await client.get("/api/v1/repositories")).status == 200
    whole = accounts.store.path.read_text()
    caplog.set_level(logging.ERROR, logger="registry.auth.service")

    accounts.store.path.write_text(BROKEN)
    alice = basic("alice", PASSWORDS["alice"])
    await unavailable(await client.get("/v2/", headers={"Authorization": alice}))
    await unavailable(await client.get("/v2/", headers={"Authorization": bearer(token)}))
    await unavailable(await client.get("/api/v1/repositories"))  # the session cookie
    refused = await client.get("/token", headers={"Authorization": alice})
    await unavailable(refused)
    assert (await refused.json())["error"] == "temporarily_unavailable"
    logged = [r.getMessage() for r in caplog.records if r.name == "registry.auth.service"]
    assert len(logged) == 4
    assert all(
        m.startswith(f"refused a request: {accounts.store.path}: cannot read: ") for m in logged
    )

    accounts.store.path.write_text(whole)
    # Not counted as failed logins (the limit is 1), and nothing was forgotten.
    assert (await client.get("/v2/", headers={"Authorization": alice})).status == 200
    assert (await client.get("/v2/", headers={"Authorization": bearer(token)})).status == 200
    assert (await client.get("/api/v1/repositories")).status == 200
