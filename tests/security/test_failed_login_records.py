"""What a failed login leaves behind, and whom it locks out.

An attacker guessing passwords wants two things from the registry's records: the secrets people
mistype (a password typed into the user-name field is a classic) and a lockout wide enough to shut
everyone else out. A failed login names the user only when the name is a known account, never the
secret; and the per-source limit counts the address the request came from, so failures from one
address lock out that address and not another one.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest

from tests.auth.conftest import PASSWORDS, Accounts, auth_section, basic, write_accounts

SERVICE_LOG = "registry.auth.service"
#: What a user typed into the user-name field by mistake: their password.
TYPED_AS_USER = "Tr0ub4dor&3-mistyped"


@pytest.fixture
def accounts(data_dir) -> Accounts:
    return write_accounts(data_dir)


def login_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SERVICE_LOG]


@pytest.mark.parametrize("where", ["/v2/", "/token"])
async def test_a_failed_login_names_only_a_known_user_and_never_a_secret(
    start_client: Any, accounts: Accounts, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    client = await start_client(auth=auth_section())
    caplog.set_level(logging.DEBUG)
    unknown = await client.get(where, headers={"Authorization": basic(TYPED_AS_USER, "secret-1")})
    assert unknown.status == 401, await unknown.text()
    assert (await unknown.json())["errors"][0]["message"] == "incorrect username or password"
    wrong = await client.get(where, headers={"Authorization": basic("alice", "secret-2")})
    assert wrong.status == 401, await wrong.text()
    assert login_lines(caplog) == [
        "failed login for an unknown user from 127.0.0.1",
        "failed login for 'alice' from 127.0.0.1",
    ]
    for secret in (TYPED_AS_USER, "secret-1", "secret-2"):
        assert secret not in caplog.text


async def from_address(url: str, address: str, authorization: str) -> int:
    """The status of `GET url` sent from the loopback `address` (all of 127/8 is this host)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, headers={"Authorization": authorization}) as resp,
    ):
        return resp.status


@pytest.mark.parametrize("where", ["/v2/", "/token"])
async def test_failures_from_one_address_lock_out_that_address_only(
    start_client: Any, accounts: Accounts, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    client = await start_client(
        auth=auth_section(rate_limit={"max_failures_per_user": 100, "max_failures_per_source": 3})
    )
    caplog.set_level(logging.WARNING, logger=SERVICE_LOG)
    url = str(client.make_url(where))
    olga = basic("olga", PASSWORDS["olga"])
    for user in ("u1", "u2", "u3"):
        assert await from_address(url, "127.0.0.2", basic(user, "guess")) == 401
    # The guessing address is locked out, even with olga's right password...
    assert await from_address(url, "127.0.0.2", olga) == 429
    # ...and only it: olga logs in from her own address, and so does anyone else.
    assert await from_address(url, "127.0.0.3", olga) == 200
    assert (await client.get(where, headers={"Authorization": olga})).status == 200
    assert login_lines(caplog) == [
        *(["failed login for an unknown user from 127.0.0.2"] * 3),
        "login refused while locked out: source 127.0.0.2",
    ]
