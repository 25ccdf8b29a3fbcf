"""Malformed `Basic` credentials, on the registry API and on the token endpoint: no colon, no
user name, not base64, not UTF-8, another scheme. Each is refused as malformed before any
password is checked (so it counts as no failed login of anyone), never as a wrong password and
never with a 500."""

from __future__ import annotations

import base64

import pytest

from registry.auth.service import parse_basic
from registry.errors import RegistryError
from tests.auth.conftest import Accounts, auth_section, write_accounts


def raw_basic(decoded: bytes) -> str:
    return "Basic " + base64.b64encode(decoded).decode()


MALFORMED = [
    pytest.param(raw_basic(b"alice"), id="no-colon"),
    pytest.param(raw_basic(b":alice-secret-pw"), id="no-user"),
    pytest.param(raw_basic(b""), id="empty"),
    pytest.param("Basic not*base64", id="not-base64"),
    pytest.param("Basic YWxp Y2U6eA==", id="inner-space"),
    pytest.param(raw_basic(b"\xffalice:alice-secret-pw"), id="not-utf8"),
]


@pytest.mark.parametrize("value", [p.values[0].removeprefix("Basic ") for p in MALFORMED])
def test_malformed_basic_credentials_are_refused_as_malformed(value: str) -> None:
    with pytest.raises(RegistryError) as refused:
        parse_basic(value)
    assert refused.value.error.code == "UNAUTHORIZED"
    assert refused.value.message == "malformed basic credentials"


def test_a_colon_in_the_password_belongs_to_the_password() -> None:
    value = base64.b64encode(b"alice:pass:word").decode()
    assert parse_basic(value) == ("alice", "pass:word")
    assert parse_basic(base64.b64encode(b"alice:").decode()) == ("alice", "")


@pytest.fixture
def accounts(data_dir) -> Accounts:
    return write_accounts(data_dir)


@pytest.fixture
async def auth_client(start_client, accounts):
    return await start_client(auth=auth_section())


@pytest.mark.parametrize("authorization", MALFORMED)
async def test_the_registry_refuses_malformed_basic_credentials(
    auth_client, authorization: str
) -> None:
    resp = await auth_client.get("/v2/", headers={"Authorization": authorization})
    assert resp.status == 401
    body = await resp.json()
    assert body["errors"][0]["code"] == "UNAUTHORIZED"
    assert body["errors"][0]["message"] == "malformed basic credentials"
    resp = await auth_client.get(
        "/token", params={"service": "trustyard-test"}, headers={"Authorization": authorization}
    )
    assert resp.status == 401
    body = await resp.json()
    assert (body["error"], body["error_description"]) == (
        "invalid_grant",
        "malformed basic credentials",
    )


@pytest.mark.parametrize(
    "authorization",
    ["Digest username=alice", "Apikey YWxpY2U6YWxpY2Utc2VjcmV0LXB3", "Bearer x", "Negotiate x"],
)
async def test_another_scheme_is_refused_by_name(auth_client, authorization: str) -> None:
    """Schemes sorting before and after `Basic`, one carrying valid Basic credentials."""
    scheme = authorization.split()[0]
    if scheme != "Bearer":  # a bearer token is the registry's own scheme
        resp = await auth_client.get("/v2/", headers={"Authorization": authorization})
        assert resp.status == 401
        body = await resp.json()
        assert body["errors"][0]["code"] == "UNAUTHORIZED"
        assert body["errors"][0]["message"] == "unsupported authorization scheme"
    resp = await auth_client.get(
        "/token",
        params={"service": "trustyard-test"},
        headers={"Authorization": authorization},
    )
    assert resp.status == 400
    body = await resp.json()
    assert (body["error"], body["error_description"]) == (
        "invalid_request",
        "only Basic credentials are accepted here",
    )
