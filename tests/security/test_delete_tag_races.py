"""A delete by digest racing a push that tags the same manifest.

A delete by digest removes the manifest with every tag pointing at it, and the policy decides on
those tags (an immutable release tag refuses the delete). A pusher who tags the manifest with a
release tag while the delete is on its way must not see the fresh release deleted unchecked:
the delete holds the guard of every tag it removes and decides on the tags the manifest has
once it holds them. The push is held at the right moment by the test (no sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from policies.gateway import PolicyGate
from registry.context import CONTEXT
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


async def immutable_release_client(start_client: Any, tmp_path: Path) -> TestClient:
    """An in-process registry whose policy makes `v*` tags immutable, for pushes and deletes."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    return await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})


async def test_a_release_tag_pushed_during_a_delete_by_digest_is_not_deleted_unchecked(
    start_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await immutable_release_client(start_client, tmp_path)
    digest, body = await push_image(client, "app/web", "dev")
    gate = client.server.app[CONTEXT].policy
    real = PolicyGate.tag_guard
    asked = asyncio.Event()

    @contextlib.asynccontextmanager
    async def watched(
        self: PolicyGate, repository: str, tag: str | None, **options: bool
    ) -> AsyncIterator[None]:
        if tag == "dev":
            asked.set()
        async with real(self, repository, tag, **options):
            yield

    monkeypatch.setattr(PolicyGate, "tag_guard", watched)
    # The test holds `dev`, as a slow push to it would: the delete has read the manifest's tags
    # (only `dev`) and waits for that guard.
    async with real(gate, "app/web", "dev"):
        deleting = asyncio.ensure_future(client.delete(f"/v2/app/web/manifests/{digest}"))
        await asyncio.wait_for(asked.wait(), PATIENCE)
        # Meanwhile the same manifest is tagged as a release.
        resp = await client.put(
            "/v2/app/web/manifests/v1", data=body, headers={"Content-Type": OCI_MANIFEST}
        )
        assert resp.status == 201, await resp.text()
        assert not deleting.done()
    resp = await asyncio.wait_for(deleting, PATIENCE)
    body_json = await resp.json()
    assert (resp.status, error_codes(body_json)) == (403, ["DENIED"])
    assert body_json["errors"][0]["message"] == (
        'rule "release tags are immutable": tag v1 is immutable and cannot be deleted '
        f"(it points to {digest[:19]}…)"
    )
    for tag in ("v1", "dev"):
        got = await client.get(f"/v2/app/web/manifests/{tag}")
        assert (got.status, got.headers["Docker-Content-Digest"]) == (200, digest)
