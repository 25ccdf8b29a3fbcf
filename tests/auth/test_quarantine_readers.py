"""Producers may read what they must sign: a quarantined image is readable by the callers allowed
to push to its repository (or by whom `quarantine.readable_by` names), refused to everyone else,
and every such read is logged as allowed with its reason."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.app import ANONYMOUS_QUARANTINE_WARNING
from registry.context import CONTEXT
from tests.auth.conftest import PASSWORDS, Accounts, As, basic, fetch_token
from tests.oci import error_codes, push_blob, push_image

#: ci/** is pushed by the robot `ci` (group ci) and alice; bob and anonymous only pull it.
PERMISSIONS: list[dict[str, Any]] = [
    {"namespace": "ci/**", "groups": {"ci": "push"}, "users": {"bob": "pull"}},
    {"namespace": "ci/app", "users": {"alice": "push"}},
    {"namespace": "**", "groups": {"ops": "admin"}},
]

REVIEWED = """
version: 1
rules:
  - name: reviewed images only
    match: {repositories: ["ci/**"], on: [pull]}
    require:
      annotations: {com.example.reviewed: "^yes$"}
"""


def policy(tmp_path: Path, extra: str = "") -> dict[str, Any]:
    path = tmp_path / "policy.yaml"
    path.write_text(REVIEWED + extra)
    return {"file": str(path), "reload": False}


async def start(start_client: Any, tmp_path: Path, extra: str = "") -> TestClient:
    return await start_client(
        auth={"service": "trustyard-test", "permissions": PERMISSIONS},
        policy=policy(tmp_path, extra),
    )


async def decisions(client: TestClient, **query: str) -> list[dict[str, Any]]:
    olga = As(client, basic("olga", PASSWORDS["olga"]))
    resp = await olga.get("/api/v1/decisions", params=query)
    assert resp.status == 200, await resp.text()
    return list((await resp.json())["decisions"])


async def flush(client: TestClient) -> None:
    await client.server.app[CONTEXT].policy.flush()


async def test_the_pushing_robot_reads_its_quarantined_image_and_the_deployer_does_not(
    start_client: Any, tmp_path: Path, accounts: Accounts
) -> None:
    client = await start(start_client, tmp_path)
    robot = As(client, basic("ci", accounts.robot_token))
    digest, body = await push_image(robot, "ci/app", "v1")
    for method in ("HEAD", "GET"):
        for reference in ("v1", digest):
            resp = await robot.request(method, f"/v2/ci/app/manifests/{reference}")
            assert resp.status == 200, (method, reference, await resp.text())
            assert resp.headers["Docker-Content-Digest"] == digest
            assert resp.headers["Warning"].startswith(
                '299 trustyard "quarantined; read by a producer of ci/app (rule \\"reviewed'
            )
    assert await (await robot.get("/v2/ci/app/manifests/v1")).read() == body
    # A pull-only deployer and an anonymous caller are refused, with the rule's reason.
    bob = As(client, basic("bob", PASSWORDS["bob"]))
    denied = await bob.get("/v2/ci/app/manifests/v1")
    assert denied.status == 403
    document = await denied.json()
    assert error_codes(document) == ["DENIED"]
    assert document["errors"][0]["message"] == (
        'rule "reviewed images only": manifest annotation com.example.reviewed missing'
    )
    assert (await client.get("/v2/ci/app/manifests/v1")).status == 401
    await flush(client)
    logged = await decisions(client, repository="ci/app")
    by_who = {(d["identity"], d["outcome"]) for d in logged if d["action"] == "pull"}
    assert ("ci", "allow") in by_who and ("bob", "deny") in by_who
    allowed = [d for d in logged if d["identity"] == "ci" and d["action"] == "pull"]
    assert all(
        d["reason"].startswith("quarantined; read by a producer of ci/app (") for d in allowed
    )
    assert all(d["rule"] == "reviewed images only" for d in allowed)


async def test_a_pull_only_token_of_a_producer_still_reads(
    start_client: Any, tmp_path: Path, accounts: Accounts
) -> None:
    """Signers (cosign, sigstore-js) read with a pull-scoped token before they push: the identity
    decides, not the token's scope."""
    client = await start(start_client, tmp_path)
    await push_image(As(client, basic("ci", accounts.robot_token)), "ci/app", "v1")
    token = await fetch_token(
        client, "repository:ci/app:pull", user="ci", secret=accounts.robot_token
    )
    resp = await client.get("/v2/ci/app/manifests/v1", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    bob_token = await fetch_token(client, "repository:ci/app:pull", user="bob")
    resp = await client.get(
        "/v2/ci/app/manifests/v1", headers={"Authorization": f"Bearer {bob_token}"}
    )
    assert resp.status == 403


async def test_a_producer_of_another_repository_does_not_read(
    start_client: Any, tmp_path: Path, accounts: Accounts
) -> None:
    client = await start(start_client, tmp_path)
    await push_image(As(client, basic("ci", accounts.robot_token)), "ci/other", "v1")
    # alice pushes ci/app only: ci/other is not hers, and she may not even pull it.
    alice = As(client, basic("alice", PASSWORDS["alice"]))
    assert (await alice.get("/v2/ci/other/manifests/v1")).status == 403
    assert (
        await As(client, basic("bob", PASSWORDS["bob"])).get("/v2/ci/other/manifests/v1")
    ).status == 403


async def test_readable_by_narrows_to_a_group(
    start_client: Any, tmp_path: Path, accounts: Accounts
) -> None:
    client = await start(start_client, tmp_path, "quarantine: {readable_by: {groups: [ci]}}\n")
    await push_image(As(client, basic("ci", accounts.robot_token)), "ci/app", "v1")
    # alice may push ci/app, but only group ci reads quarantined images now.
    alice = As(client, basic("alice", PASSWORDS["alice"]))
    assert (await alice.get("/v2/ci/app/manifests/v1")).status == 403
    robot = await As(client, basic("ci", accounts.robot_token)).get("/v2/ci/app/manifests/v1")
    assert robot.status == 200
    assert "read by ci of group ci (quarantine.readable_by.groups)" in robot.headers["Warning"]


async def test_readable_by_widens_to_a_pull_only_user_and_empty_means_nobody(
    start_client: Any, tmp_path: Path, accounts: Accounts
) -> None:
    client = await start(
        start_client, tmp_path, "quarantine: {readable_by: {users: [bob], producers: true}}\n"
    )
    await push_image(As(client, basic("ci", accounts.robot_token)), "ci/app", "v1")
    assert (
        await As(client, basic("bob", PASSWORDS["bob"])).get("/v2/ci/app/manifests/v1")
    ).status == 200
    assert (
        await As(client, basic("ci", accounts.robot_token)).get("/v2/ci/app/manifests/v1")
    ).status == 200


async def test_readable_by_nobody(start_client: Any, tmp_path: Path, accounts: Accounts) -> None:
    client = await start(start_client, tmp_path, "quarantine: {readable_by: {}}\n")
    robot = As(client, basic("ci", accounts.robot_token))
    await push_image(robot, "ci/app", "v1")
    assert (await robot.get("/v2/ci/app/manifests/v1")).status == 403


async def test_a_pullable_image_is_logged_as_an_ordinary_allow(
    start_client: Any, tmp_path: Path, accounts: Accounts
) -> None:
    client = await start(start_client, tmp_path)
    robot = As(client, basic("ci", accounts.robot_token))
    await push_image(robot, "ci/app", "v2", extra={"annotations": {"com.example.reviewed": "yes"}})
    resp = await robot.get("/v2/ci/app/manifests/v2")
    assert resp.status == 200 and "Warning" not in resp.headers
    await flush(client)
    logged = await decisions(client, repository="ci/app", outcome="allow")
    assert [d["reason"] for d in logged if d["action"] == "pull"] == [
        'every matching rule holds: "reviewed images only"'
    ]


@pytest.mark.parametrize("readable_by", ["", "quarantine: {readable_by: {users: [anonymous]}}\n"])
async def test_without_auth_nobody_is_a_producer_unless_anonymous_is_named(
    start_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, readable_by: str
) -> None:
    with caplog.at_level(logging.WARNING):
        client = await start_client(policy=policy(tmp_path, readable_by))
    assert ANONYMOUS_QUARANTINE_WARNING in caplog.messages
    await push_image(client, "ci/app", "v1")
    resp = await client.get("/v2/ci/app/manifests/v1")
    if readable_by:
        assert resp.status == 200
        assert "read by anonymous (quarantine.readable_by.users)" in resp.headers["Warning"]
    else:
        assert resp.status == 403
        assert error_codes(await resp.json()) == ["DENIED"]


async def test_without_auth_or_pull_rules_nothing_is_said(
    start_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning is for policies that quarantine: no pull rule, no quarantine."""
    path = tmp_path / "push-only.yaml"
    path.write_text(REVIEWED.replace("on: [pull]", "on: [push]"))
    with caplog.at_level(logging.WARNING):
        await start_client(policy={"file": str(path), "reload": False})
    assert ANONYMOUS_QUARANTINE_WARNING not in caplog.messages


async def test_the_producer_reads_the_blobs_of_its_quarantined_image_and_the_deployer_does_not(
    start_client: Any, tmp_path: Path, accounts: Accounts
) -> None:
    """The blob gate asks the same question (`registry.auth.producers.quarantine_reader`)."""
    client = await start(start_client, tmp_path)
    robot = As(client, basic("ci", accounts.robot_token))
    _, body = await push_image(robot, "ci/app", "v1", layers=[b"quarantined layer"])
    layer = json.loads(body)["layers"][0]["digest"]
    got = await robot.get(f"/v2/ci/app/blobs/{layer}")
    assert got.status == 200 and await got.read() == b"quarantined layer"
    bob = As(client, basic("bob", PASSWORDS["bob"]))
    refused = await bob.get(f"/v2/ci/app/blobs/{layer}")
    assert refused.status == 403
    assert error_codes(await refused.json()) == ["DENIED"]


async def test_a_blob_no_image_holds_yet_is_read_by_the_repository_s_pushers_only(
    start_client: Any, tmp_path: Path, accounts: Accounts
) -> None:
    """An upload whose manifest is not pushed yet (or was refused) is the pushers' own: a caller
    who may only pull the repository neither reads it nor learns that it is there."""
    client = await start(start_client, tmp_path)
    robot = As(client, basic("ci", accounts.robot_token))
    layer = await push_blob(robot, "ci/app", b"a layer of a push in progress")
    for method in ("GET", "HEAD"):
        assert (await robot.request(method, f"/v2/ci/app/blobs/{layer}")).status == 200, method
    bob = As(client, basic("bob", PASSWORDS["bob"]))  # pulls ci/**
    refused = await bob.get(f"/v2/ci/app/blobs/{layer}")
    assert refused.status == 403
    document = await refused.json()
    assert error_codes(document) == ["DENIED"]
    assert document["errors"][0]["message"] == (
        f'rule "reviewed images only": blob {layer} is not part of any image of ci/app that may '
        "be pulled (only those who may push to it can read it)"
    )
    assert (await bob.head(f"/v2/ci/app/blobs/{layer}")).status == 403


async def test_without_auth_every_caller_is_a_pusher_of_a_blob_no_image_holds_yet(
    start_client: Any, tmp_path: Path
) -> None:
    """With no accounts anybody may push, so anybody reads an upload not yet in an image (a
    client checks its blobs with HEAD before it pushes the manifest)."""
    client = await start_client(policy=policy(tmp_path))
    layer = await push_blob(client, "ci/app", b"a layer of a push in progress")
    assert (await client.head(f"/v2/ci/app/blobs/{layer}")).status == 200
    got = await client.get(f"/v2/ci/app/blobs/{layer}")
    assert got.status == 200
    assert await got.read() == b"a layer of a push in progress"
