"""Attacks on the producers' read of quarantined images: who is not a producer must not become
one, by repository, by namespace, by token, or by the absence of authentication."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.auth.conftest import PASSWORDS, Accounts, As, basic, fetch_token, write_accounts
from tests.oci import push_image

#: dev pushes team-a/** and, by a broad rule, library/** too; only ops administer library/**.
PERMISSIONS: list[dict[str, Any]] = [
    {"namespace": "team-a/**", "groups": {"dev": "push"}},
    {"namespace": "team-b/**", "groups": {"ci": "push"}, "users": {"alice": "pull"}},
    {"namespace": "library/**", "groups": {"dev": "push"}, "authenticated": "pull"},
    {"namespace": "**", "groups": {"ops": "admin"}},
]

POLICY = """
version: 1
library:
  namespace: library
  images:
    - name: base
      tags: ["1"]
rules:
  - name: nothing is pullable
    match: {repositories: ["**"], on: [pull]}
    deny: quarantined for the test
"""


@pytest.fixture
def accounts(data_dir: Path) -> Accounts:
    return write_accounts(data_dir)


async def start(start_client: Any, tmp_path: Path) -> TestClient:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return await start_client(
        auth={"service": "trustyard-test", "permissions": PERMISSIONS},
        policy={"file": str(path), "reload": False},
    )


async def test_a_producer_of_one_repository_reads_nothing_quarantined_elsewhere(
    start_client: Any, tmp_path: Path, accounts: Accounts
) -> None:
    """alice pushes team-a/** and may pull team-b/app: a producer there, a puller here."""
    client = await start(start_client, tmp_path)
    await push_image(As(client, basic("ci", accounts.robot_token)), "team-b/app", "v1")
    alice = As(client, basic("alice", PASSWORDS["alice"]))
    for method in ("HEAD", "GET"):
        assert (await alice.request(method, "/v2/team-b/app/manifests/v1")).status == 403
    await push_image(alice, "team-a/app", "v1")
    assert (await alice.get("/v2/team-a/app/manifests/v1")).status == 200


async def test_push_in_the_library_namespace_without_admin_makes_no_producer(
    start_client: Any, tmp_path: Path, accounts: Accounts
) -> None:
    """Only ops may change the library, so only ops produce there: a broad `push` rule over
    library/** does not let dev read quarantined library images."""
    client = await start(start_client, tmp_path)
    olga = As(client, basic("olga", PASSWORDS["olga"]))
    await push_image(olga, "library/base", "1")
    alice = As(client, basic("alice", PASSWORDS["alice"]))
    assert (await alice.get("/v2/library/base/manifests/1")).status == 403
    resp = await olga.get("/v2/library/base/manifests/1")
    assert resp.status == 200
    assert "quarantined; read by a producer of library/base" in resp.headers["Warning"]


async def test_a_producer_token_for_another_repository_reads_nothing(
    start_client: Any, tmp_path: Path, accounts: Accounts
) -> None:
    """The identity decides, but a token still binds its repository: alice's token for
    team-a/app does not open team-a/other, even though she produces both."""
    client = await start(start_client, tmp_path)
    alice = As(client, basic("alice", PASSWORDS["alice"]))
    await push_image(alice, "team-a/other", "v1")
    token = await fetch_token(client, "repository:team-a/app:pull,push", user="alice")
    resp = await client.get(
        "/v2/team-a/other/manifests/v1", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 401
    assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
