"""The token endpoint's refusals, each with its OAuth2 error and message: grant types other than
`password` whichever way they sort (with a correct password, a refresh or client grant must not
pass as a password grant), a password grant missing a field, a service that is not ours whichever
way it sorts (on GET and on POST), and a locked account's 429 in OAuth2 terms."""

from __future__ import annotations

import json
from typing import Any

import pytest

from registry.auth.token_endpoint import _failure
from registry.errors import SCAN_STALE
from storage.errors import StorageFull, StorageUnavailable
from storage.oci.errors import (
    DENIED,
    NAME_INVALID,
    TOOMANYREQUESTS,
    UNAUTHORIZED,
    UNKNOWN,
    OciError,
)
from tests.auth.conftest import PASSWORDS, Accounts, auth_section, basic, write_accounts


@pytest.fixture
def accounts(data_dir) -> Accounts:
    return write_accounts(data_dir)


@pytest.fixture
async def auth_client(start_client, accounts):
    return await start_client(auth=auth_section())


async def refused(resp: Any, status: int, error: str, message: str) -> None:
    assert resp.status == status, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert (body["error"], body["error_description"]) == (error, message)
    assert body["errors"][0]["message"] == message


@pytest.mark.parametrize(
    "grant_type",
    ["refresh_token", "client_credentials", "authorization_code", "passwords", "Password", ""],
)
async def test_only_the_password_grant_is_accepted(auth_client, grant_type: str) -> None:
    resp = await auth_client.post(
        "/token",
        data={
            "grant_type": grant_type,
            "username": "alice",
            "password": PASSWORDS["alice"],
            "service": "trustyard-test",
        },
    )
    await refused(resp, 400, "unsupported_grant_type", "only grant_type=password is supported")


@pytest.mark.parametrize(
    "form",
    [
        {"username": "alice"},
        {"password": PASSWORDS["alice"]},
        {"username": "", "password": PASSWORDS["alice"]},
        {},
    ],
)
async def test_a_password_grant_needs_a_username_and_a_password(
    auth_client, form: dict[str, str]
) -> None:
    resp = await auth_client.post("/token", data={"grant_type": "password", **form})
    await refused(resp, 400, "invalid_request", "username and password are required")


@pytest.mark.parametrize("service", ["aaa", "someone-else", "trustyard-test2", "zzz", ""])
async def test_a_token_for_another_service_is_refused_on_get_and_post(
    auth_client, service: str
) -> None:
    message = f"unknown service {service!r}"
    resp = await auth_client.get(
        "/token",
        params={"service": service},
        headers={"Authorization": basic("alice", PASSWORDS["alice"])},
    )
    await refused(resp, 400, "invalid_request", message)
    resp = await auth_client.post(
        "/token",
        data={
            "grant_type": "password",
            "username": "alice",
            "password": PASSWORDS["alice"],
            "service": service,
        },
    )
    await refused(resp, 400, "invalid_request", message)


async def test_a_token_without_a_service_is_for_this_registry(auth_client) -> None:
    resp = await auth_client.get("/token", params={"scope": "repository:library/app:pull"})
    assert resp.status == 200
    body = await resp.json()
    # GET answers docker's fields only; the OAuth2 `scope` is the POST grant's.
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    resp = await auth_client.post(
        "/token",
        data={"grant_type": "password", "username": "alice", "password": PASSWORDS["alice"]},
    )
    assert resp.status == 200
    assert set(await resp.json()) == {"token", "access_token", "expires_in", "issued_at", "scope"}


async def test_a_locked_account_is_told_to_wait_in_oauth2_terms(start_client, accounts) -> None:
    client = await start_client(auth=auth_section(rate_limit={"max_failures_per_user": 1}))
    wrong = await client.post(
        "/token", data={"grant_type": "password", "username": "alice", "password": "guess"}
    )
    await refused(wrong, 401, "invalid_grant", "incorrect username or password")
    assert (await wrong.json())["errors"][0]["code"] == "UNAUTHORIZED"
    locked = await client.post(
        "/token",
        data={"grant_type": "password", "username": "alice", "password": PASSWORDS["alice"]},
    )
    await refused(locked, 429, "too_many_requests", "too many failed logins: try again later")
    assert (await locked.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert 0 < int(locked.headers["Retry-After"]) <= 301


@pytest.mark.parametrize(
    ("failure", "status", "error"),
    [
        (OciError(UNAUTHORIZED, message="invalid username or password"), 401, "invalid_grant"),
        (OciError(TOOMANYREQUESTS, message="locked for 30 s"), 429, "too_many_requests"),
        (StorageUnavailable("the users file could not be read"), 503, "temporarily_unavailable"),
        (StorageFull("no space left"), 507, "server_error"),
        # The lowest server error is one too (not blamed on the client's request).
        (OciError(UNKNOWN, message="an internal error"), 500, "server_error"),
        # Any other client error is the client's request, below 401 as above it.
        (OciError(NAME_INVALID, message="invalid name"), 400, "invalid_request"),
        (OciError(SCAN_STALE, message="stale"), 409, "invalid_request"),
        (OciError(DENIED, message="denied"), 403, "invalid_request"),
    ],
)
def test_a_refusal_names_the_oauth2_error_of_its_cause(
    failure: Exception, status: int, error: str
) -> None:
    """Only a rate limit tells an OAuth2 client to wait; a failure of the registry's own (a
    users file that cannot be read) is not reported as a lockout or as bad credentials."""
    response = _failure(failure)  # type: ignore[arg-type]
    body = json.loads(response.body)  # type: ignore[arg-type]
    assert (response.status, body["error"]) == (status, error)
    assert body["error_description"] == failure.message  # type: ignore[attr-defined]
