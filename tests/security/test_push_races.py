"""Pushes racing deletes once a push holds no lock of the database.

A push to a tag re-checks the tag inside its own transaction (`TagPremise`) instead of waiting
for a lock another process holds, so a change that decided on what a manifest was tagged with
must re-check that too, inside its own transaction: a delete by digest removes every tag
pointing at the manifest, and the tags it decided on are only those it read before its check.
Each race is held at the right moment by the test (no sleeps), on the backend the suite runs
(`TRUSTYARD_TEST_METADATA`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from policies.gateway import PolicyGate
from tests.oci import OCI_MANIFEST, error_codes, push_image

POLICY = """\
version: 1
rules:
  - name: release tags are immutable
    match: {repositories: ["**"], tags: ["v*"], on: [push, delete]}
    require: {immutable_tags: true}
"""

#: Only turns a hang into a failure.
PATIENCE = 60


async def test_a_release_tag_pushed_while_a_delete_by_digest_is_decided_is_not_deleted(
    start_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete holds the guard of `dev` and is deciding on `dev` alone when a push tags the
    same manifest `v1` (its own guard, free): the delete must not then remove `v1` with it."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    client: TestClient = await start_client(
        policy={"file": str(tmp_path / "policy.yaml"), "reload": False}
    )
    digest, body = await push_image(client, "app/web", "dev")
    real = PolicyGate.check_delete
    deciding, tagged = asyncio.Event(), asyncio.Event()
    decided: list[tuple[str, ...]] = []

    async def held(self: PolicyGate, request: Any, record: Any) -> dict[str, str]:
        decided.append(request.tags)
        if len(decided) == 1:
            deciding.set()
            await tagged.wait()
        return await real(self, request, record)

    monkeypatch.setattr(PolicyGate, "check_delete", held)
    deleting = asyncio.ensure_future(client.delete(f"/v2/app/web/manifests/{digest}"))
    await asyncio.wait_for(deciding.wait(), PATIENCE)
    resp = await client.put(
        "/v2/app/web/manifests/v1", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201, await resp.text()
    tagged.set()
    resp = await asyncio.wait_for(deleting, PATIENCE)
    assert resp.status == 403, await resp.text()
    answer = await resp.json()
    assert error_codes(answer) == ["DENIED"]
    assert answer["errors"][0]["message"] == (
        'rule "release tags are immutable": tag v1 is immutable and cannot be deleted '
        f"(it points to {digest[:19]}…)"
    )
    # Decided first on `dev`, then again on the tags the manifest had when it was deleted.
    assert decided == [("dev",), ("dev", "v1")]
    for tag in ("v1", "dev"):
        got = await client.get(f"/v2/app/web/manifests/{tag}")
        assert (got.status, got.headers.get("Docker-Content-Digest")) == (200, digest), tag
