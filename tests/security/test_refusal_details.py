"""A refused blob read or blob delete tells the client, in the error's detail, which blob was
refused and (for a delete) which manifest keeps it, besides the policy version and the failing
rules: what a developer needs to find the release that holds the layer, from the client's
output alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.context import CONTEXT
from tests.security.test_side_doors import POLICY, push_image


@pytest.fixture
async def gated(start_client: Any, tmp_path: Path) -> TestClient:
    (tmp_path / "policy.yaml").write_text(POLICY)
    return await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})


async def detail(resp: Any) -> dict[str, Any]:
    """The detail of a 403 DENIED answer (asserting it is one)."""
    assert resp.status == 403, await resp.text()
    body = await resp.json()
    assert [e["code"] for e in body["errors"]] == ["DENIED"]
    return body["errors"][0]["detail"]


async def test_a_refused_blob_delete_names_the_blob_and_the_manifest_that_keeps_it(
    gated: TestClient,
) -> None:
    release, _, layer = await push_image(gated, "app/x", "v1", b"released layer")
    found = await detail(await gated.delete(f"/v2/app/x/blobs/{layer}"))
    version = gated.server.app[CONTEXT].policy.policy.version
    assert found == {
        "blob": layer,
        "needed_by": release,
        "policy_version": version,
        "rules": [
            {
                "rule": "release tags are immutable",
                "mode": "enforce",
                "reason": (
                    f"tag v1 is immutable and cannot be deleted (it points to {release[:19]}\u2026)"
                ),
            }
        ],
    }


async def test_a_refused_blob_read_names_the_blob(gated: TestClient) -> None:
    _, _, layer = await push_image(gated, "prod/app", "v1", b"secret layer bytes")
    found = await detail(await gated.get(f"/v2/prod/app/blobs/{layer}"))
    assert found["blob"] == layer
    assert [r["rule"] for r in found["rules"]] == ["prod images are reviewed"]
