"""The `signature` rule's options through the registry API: a quorum (`at_least: N, of: [...]`),
`docker_reference` (the signed reference must name the repository) and `every_platform` (an
index whose platform images are each signed)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from policies.signatures.simple_signing import SIGNATURE_ANNOTATION
from storage.oci.media_types import SIMPLE_SIGNING
from tests.oci import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, descriptor, push_blob, push_image
from tests.signing import pull, simple_signing_payload, start_trusting

SIGNERS = ("release", "ci", "qa")

POLICY = """\
version: 1
trust:
  keys:
    release: {pem_file: release.pub}
    ci: {pem_file: ci.pub}
    qa: {pem_file: qa.pub}
rules:
  - name: two of three
    match: {repositories: ["quorum/**"], on: [pull]}
    require:
      signature: {at_least: 2, of: [release, ci, qa]}
  - name: signed for here
    match: {repositories: ["pinned/**"], on: [pull]}
    require:
      signature: {any_of: [release], docker_reference: true}
  - name: every platform
    match: {repositories: ["multi/**"], on: [pull]}
    require:
      signature: {any_of: [release], every_platform: true}
  - name: index only
    match: {repositories: ["indexonly/**"], on: [pull]}
    require:
      signature: {any_of: [release]}
"""


@pytest.fixture
def keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {name: ec.generate_private_key(ec.SECP256R1()) for name in SIGNERS}


@pytest.fixture
async def gated(start_client: Any, tmp_path: Path, keys: dict[str, Any]) -> TestClient:
    return await start_trusting(start_client, tmp_path, POLICY, keys)


async def sign(
    client: TestClient,
    name: str,
    image: str,
    signers: list[ec.EllipticCurvePrivateKey],
    reference: str | None = None,
) -> None:
    """A `.sig` manifest with one simple signing layer per signer, as cosign appends them."""
    payload = simple_signing_payload(reference or f"localhost:5000/{name}", image)
    config = json.dumps({"architecture": "", "os": "", "rootfs": {"type": "layers"}}).encode()
    await push_blob(client, name, config)
    await push_blob(client, name, payload)
    layers = [
        descriptor(
            SIMPLE_SIGNING,
            payload,
            annotations={
                SIGNATURE_ANNOTATION: base64.b64encode(
                    key.sign(payload, ec.ECDSA(hashes.SHA256()))
                ).decode()
            },
        )
        for key in signers
    ]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": layers,
    }
    resp = await client.put(
        f"/v2/{name}/manifests/{image.replace(':', '-')}.sig",
        data=json.dumps(manifest).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201, await resp.text()


async def test_a_quorum_needs_two_distinct_signers(gated: TestClient, keys: dict[str, Any]) -> None:
    digest, _ = await push_image(gated, "quorum/web", "v1")
    await sign(gated, "quorum/web", digest, [keys["release"]])
    status, message = await pull(gated, "quorum/web", "v1")
    assert status == 403
    assert message == (
        'rule "two of three": needs signatures by at least 2 of release, ci and qa; '
        "found 1 signature, by release"
    )
    # The same signer twice is still one signer.
    await sign(gated, "quorum/web", digest, [keys["release"], keys["release"]])
    assert (await pull(gated, "quorum/web", "v1"))[0] == 403
    await sign(gated, "quorum/web", digest, [keys["release"], keys["qa"]])
    assert await pull(gated, "quorum/web", "v1") == (200, "")


async def test_docker_reference_must_name_the_repository(
    gated: TestClient, keys: dict[str, Any]
) -> None:
    digest, _ = await push_image(gated, "pinned/web", "v1")
    await sign(gated, "pinned/web", digest, [keys["release"]], "registry.example/other/web:v1")
    status, message = await pull(gated, "pinned/web", "v1")
    assert status == 403
    assert message == (
        'rule "signed for here": needs a signature by release; '
        "found 1 signature, by release but for repository other/web"
    )
    await sign(gated, "pinned/web", digest, [keys["release"]], "registry.example:5000/pinned/web")
    assert await pull(gated, "pinned/web", "v1") == (200, "")


async def push_index(client: TestClient, name: str, tag: str) -> tuple[str, list[str]]:
    """Two platform images and an index of them; (index digest, platform digests)."""
    children = []
    for arch in ("amd64", "arm64"):
        digest, body = await push_image(client, name, f"{tag}-{arch}", layers=[arch.encode()])
        children.append((digest, body, arch))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(body),
                "platform": {"architecture": arch, "os": "linux"},
            }
            for digest, body, arch in children
        ],
    }
    resp = await client.put(
        f"/v2/{name}/manifests/{tag}",
        data=json.dumps(index).encode(),
        headers={"Content-Type": OCI_INDEX},
    )
    assert resp.status == 201, await resp.text()
    return resp.headers["Docker-Content-Digest"], [c[0] for c in children]


async def test_every_platform_signed_accepts_the_index(
    gated: TestClient, keys: dict[str, Any]
) -> None:
    _, platforms = await push_index(gated, "multi/web", "v1")
    await sign(gated, "multi/web", platforms[0], [keys["release"]])
    status, message = await pull(gated, "multi/web", "v1")
    assert status == 403
    assert message == (
        'rule "every platform": needs a signature by release on the index or on every platform '
        f"image; 1 of 2 platform images are not signed (first: {platforms[1][:19]}…)"
    )
    await sign(gated, "multi/web", platforms[1], [keys["release"]])
    assert await pull(gated, "multi/web", "v1") == (200, "")


async def test_a_signed_index_covers_its_platform_images(
    gated: TestClient, keys: dict[str, Any]
) -> None:
    index, platforms = await push_index(gated, "indexonly/web", "v1")
    for platform in platforms:  # without every_platform, signed platforms are not enough
        await sign(gated, "indexonly/web", platform, [keys["release"]])
    assert (await pull(gated, "indexonly/web", "v1"))[0] == 403
    await sign(gated, "indexonly/web", index, [keys["release"]])  # cosign's default
    assert await pull(gated, "indexonly/web", "v1") == (200, "")
    # A platform image pulled by digest is covered by the signed index that holds it.
    other, _ = await push_image(gated, "indexonly/web", "loose", layers=[b"loose"])
    assert (await pull(gated, "indexonly/web", other))[0] == 403
    assert (await pull(gated, "indexonly/web", platforms[0]))[0] == 200
