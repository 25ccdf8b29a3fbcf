"""The middleware's exemptions are exact: the scanner webhook skips registry authentication for
its `POST` only, so every other method on its path (a `PUT` sorts after `POST`, a `PATCH`
before it) still meets the admin API's guard and is refused before any routing."""

from __future__ import annotations

import pytest

from tests.auth.conftest import PASSWORDS, As, auth_section, basic, write_accounts
from tests.oci import error_codes


@pytest.fixture
async def auth_client(start_client, data_dir):
    write_accounts(data_dir)
    return await start_client(auth=auth_section())


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "GET"])
async def test_only_post_skips_authentication_on_the_scanner_webhook(
    auth_client, method: str
) -> None:
    resp = await auth_client.request(method, "/api/v1/scans", data=b"{}")
    assert resp.status == 401, await resp.text()
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="trustyard"'
    assert error_codes(await resp.json()) == ["UNAUTHORIZED"]


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_a_registry_user_cannot_reach_the_webhook_path_with_another_method(
    auth_client, method: str
) -> None:
    alice = As(auth_client, basic("alice", PASSWORDS["alice"]))
    resp = await alice.request(method, "/api/v1/scans", data=b"{}")
    assert resp.status == 403, await resp.text()
    body = await resp.json()
    assert error_codes(body) == ["DENIED"]
    assert body["errors"][0]["message"] == "for registry administrators only"
