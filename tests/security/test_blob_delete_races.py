"""Deleting a blob that an immutable release needs is refused also when another manifest that
needed it is deleted at the same moment: a manifest gone between the lookup of who needs the
blob and the check of each is skipped, and the check goes on to the others.

The attacker has push rights and wants a released image's layer gone: they push a throw-away
manifest sharing the layer (it sorts first: newest), then delete it and the blob together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.context import CONTEXT
from tests.security.test_side_doors import POLICY, denied, push_image


@pytest.fixture
async def gated(start_client: Any, tmp_path: Path) -> TestClient:
    """A registry enforcing the side doors' policy: `v*` tags are immutable (push, delete)."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    return await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})


def immutable(manifest: str) -> str:
    """The immutable-tags rule's refusal to delete v1 pointing at `manifest`."""
    return (
        'rule "release tags are immutable": tag v1 is immutable and cannot be deleted (it points '
        f"to {manifest[:19]}\u2026)"
    )


async def test_a_manifest_deleted_during_the_check_does_not_end_it(
    gated: TestClient, monkeypatch: Any
) -> None:
    release, _, layer = await push_image(gated, "app/x", "v1", b"released layer")
    scratch, _, same = await push_image(gated, "app/x", "tmp", b"released layer")
    assert same == layer and scratch != release
    access = gated.app[CONTEXT].policy.blobs
    lookup = access.needing
    seen: list[list[str] | None] = []

    async def then_delete_the_scratch(
        repository: str, digest: str, kind: str, limit: int
    ) -> list[str] | None:
        """Who needs the layer, as the database answered; then the scratch manifest's delete
        lands (another request) before the gate checks each of them."""
        found = await lookup(repository, digest, kind, limit)
        if digest == layer and not seen:
            seen.append(found)
            assert (await gated.delete(f"/v2/app/x/manifests/{scratch}")).status == 202
        return found

    monkeypatch.setattr(access, "needing", then_delete_the_scratch)
    message = await denied(await gated.delete(f"/v2/app/x/blobs/{layer}"))
    assert seen == [[scratch, release]]  # the scratch manifest came first, and was gone
    assert message == (
        f"blob {layer} is needed by manifest {release} (v1), which the policy does not let be "
        f"deleted: {immutable(release)}"
    )
    resp = await gated.get(f"/v2/app/x/blobs/{layer}")
    assert resp.status == 200 and await resp.read() == b"released layer"
    assert (await gated.get(f"/v2/app/x/manifests/{scratch}")).status == 404


async def test_every_manifest_needing_a_blob_is_checked_not_only_the_first(
    gated: TestClient,
) -> None:
    """A manifest the policy lets be deleted (no release tag), newest, does not end the check:
    the release behind it still keeps the layer."""
    release, _, layer = await push_image(gated, "app/y", "v1", b"shared layer")
    await push_image(gated, "app/y", "tmp", b"shared layer")
    await push_image(gated, "app/y", "dev", b"shared layer")
    message = await denied(await gated.delete(f"/v2/app/y/blobs/{layer}"))
    assert message == (
        f"blob {layer} is needed by manifest {release} (v1), which the policy does not let be "
        f"deleted: {immutable(release)}"
    )
