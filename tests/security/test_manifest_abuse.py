"""Manifests that lie about what they point at.

A descriptor's `size` is a claim: docker (graph-driver store) reads a layer to its end and
checks only its digest, so a manifest declaring a 3 MiB layer as 10 bytes delivers 3 MiB. The
`max_size` rule therefore counts each layer as the larger of its declared size and the size of
the blob the registry holds: the lie does not pass `max_size: 1MiB` (403 naming the real size),
pushed alone or as an index child; a layer declared larger than it is is judged by the claim."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from policies.loader import parse_policy
from registry.context import CONTEXT
from tests.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    error_codes,
    push_blob,
    sha256,
)

POLICY = """\
version: 1
rules:
  - name: small images
    match: {repositories: ["**"], on: [push]}
    require: {max_size: 1MiB}
"""

CONFIG = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
LAYER = b"x" * (3 * 1024 * 1024)
SMALL = b"a small layer"
AMD64 = {"os": "linux", "architecture": "amd64"}
DENIED_3MIB = 'rule "small images": image is 3.0 MiB, over the 1.0 MiB limit'


@pytest.fixture
async def registry(start_client: Any, tmp_path: Path) -> TestClient:
    """A registry refusing images over 1 MiB, holding CONFIG, SMALL and a 3 MiB LAYER."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    client: TestClient = await start_client(
        policy={"file": str(tmp_path / "policy.yaml"), "reload": False}
    )
    for blob in (CONFIG, LAYER, SMALL):
        await push_blob(client, "app/web", blob)
    return client


def image(layer: bytes, layer_size: int | None = None) -> bytes:
    """An image manifest of CONFIG and `layer`, declaring `layer_size` (default: the truth)."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(CONFIG), "size": len(CONFIG)},
            "layers": [
                {
                    "mediaType": OCI_LAYER,
                    "digest": sha256(layer),
                    "size": len(layer) if layer_size is None else layer_size,
                }
            ],
        }
    ).encode()


async def put(client: TestClient, reference: str, body: bytes, media_type: str) -> tuple[int, Any]:
    """PUT a manifest to app/web: the status and the JSON answer (None when empty)."""
    resp = await client.put(
        f"/v2/app/web/manifests/{reference}", data=body, headers={"Content-Type": media_type}
    )
    text = await resp.text()
    return resp.status, json.loads(text) if text else None


async def assert_denied(client: TestClient, body: bytes, media_type: str, message: str) -> None:
    """Push `body` as v1: 403 DENIED with `message`, nothing stored."""
    status, answer = await put(client, "v1", body, media_type)
    assert (status, error_codes(answer)) == (403, ["DENIED"]), answer
    assert answer["errors"][0]["message"] == message
    assert (await client.get("/v2/app/web/manifests/v1")).status == 404


async def test_the_honest_large_image_is_refused(registry: TestClient) -> None:
    await assert_denied(registry, image(LAYER), OCI_MANIFEST, DENIED_3MIB)


@pytest.mark.parametrize("declared", [10, 0, 1024 * 1024])
async def test_a_layer_declared_smaller_than_it_is_is_judged_by_its_bytes(
    registry: TestClient, declared: int
) -> None:
    await assert_denied(registry, image(LAYER, declared), OCI_MANIFEST, DENIED_3MIB)


async def test_an_index_child_with_a_layer_declared_small_is_judged_by_its_bytes(
    registry: TestClient,
) -> None:
    """The child was stored while no rule applied (the policy before `max_size` was added);
    an index listing it is judged by the bytes its layer really has."""
    child = image(LAYER, 10)
    gate = registry.server.app[CONTEXT].policy
    policy, gate.policy = gate.policy, parse_policy("version: 1\nrules: []\n")
    status, answer = await put(registry, sha256(child), child, OCI_MANIFEST)
    assert status == 201, answer
    gate.policy = policy
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{**descriptor(OCI_MANIFEST, child), "platform": AMD64}],
        }
    ).encode()
    await assert_denied(
        registry,
        index,
        OCI_INDEX,
        'rule "small images": image (linux/amd64) is 3.0 MiB, over the 1.0 MiB limit',
    )


async def test_a_layer_declared_larger_than_it_is_is_judged_by_the_claim(
    registry: TestClient,
) -> None:
    """Clients trust the larger claim (containerd refuses the short blob): it counts."""
    await assert_denied(
        registry,
        image(SMALL, 2 * 1024 * 1024),
        OCI_MANIFEST,
        'rule "small images": image is 2.0 MiB, over the 1.0 MiB limit',
    )


async def test_truthful_small_images_are_stored(registry: TestClient) -> None:
    status, answer = await put(registry, "v1", image(SMALL), OCI_MANIFEST)
    assert status == 201, answer
