"""A multi-platform image signed once, on its index: a client that resolves the tag to the index
then fetches its platform image by digest (as docker, podman and skopeo do) is allowed through
the index's signature, and only through the signature of an index that lists that image.

An attacker with push rights tries the neighbours: a platform image of an unsigned index, an
image no index lists, an index signed by an untrusted key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec

from tests.oci import OCI_INDEX, OCI_MANIFEST, push_image, sha256
from tests.security.test_stale_evidence import UNSIGNED
from tests.signing import public_pem, pull, push_cosign_signature, sign, simple_signing_payload

#: Two trusted keys; prod pulls need release's signature.
POLICY = """\
version: 1
trust:
  keys:
    release: {pem_file: release.pub}
    ci: {pem_file: ci.pub}
rules:
  - name: prod is signed by release
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      signature: {any_of: [release]}
"""


@pytest.fixture
def ci_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def release_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def registry(start_client: Any, tmp_path: Path, release_key: Any, ci_key: Any) -> TestClient:
    """A registry trusting `release_key` and `ci_key`; prod/** pulls need release."""
    (tmp_path / "release.pub").write_bytes(public_pem(release_key))
    (tmp_path / "ci.pub").write_bytes(public_pem(ci_key))
    (tmp_path / "policy.yaml").write_text(POLICY)
    return await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})


async def push_index(client: TestClient, tag: str) -> tuple[str, list[str]]:
    """Push an index of an amd64 and an arm64 image under `tag`; (index, platform digests)."""
    children = []
    entries = []
    for arch in ("amd64", "arm64"):
        digest, body = await push_image(client, "prod/app", f"{tag}-{arch}", architecture=arch)
        children.append(digest)
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(body),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    resp = await client.put(
        f"/v2/prod/app/manifests/{tag}", data=index, headers={"Content-Type": OCI_INDEX}
    )
    assert resp.status == 201, await resp.text()
    return sha256(index), children


async def sign_image(client: TestClient, key: Any, digest: str) -> None:
    payload = simple_signing_payload("localhost:5000/prod/app", digest)
    await push_cosign_signature(client, "prod/app", digest, payload, sign(key, payload))


async def test_a_platform_image_of_a_signed_index_is_pulled_by_digest(
    registry: TestClient, release_key: Any
) -> None:
    index, children = await push_index(registry, "v1")
    await sign_image(registry, release_key, index)
    assert await pull(registry, "prod/app", "v1") == (200, "")
    for child in children:
        assert await pull(registry, "prod/app", child) == (200, "")


async def test_a_platform_image_of_an_unsigned_index_is_refused(
    registry: TestClient, release_key: Any
) -> None:
    signed, _ = await push_index(registry, "v1")
    await sign_image(registry, release_key, signed)
    _, children = await push_index(registry, "v2")  # another index, never signed
    for child in children:
        assert await pull(registry, "prod/app", child) == (403, UNSIGNED)


async def test_an_index_signed_by_an_untrusted_key_proves_nothing_for_its_images(
    registry: TestClient,
) -> None:
    index, children = await push_index(registry, "v1")
    await sign_image(registry, ec.generate_private_key(ec.SECP256R1()), index)
    for child in children:
        assert await pull(registry, "prod/app", child) == (403, UNSIGNED)


async def test_a_platform_image_with_another_trusted_signature_is_still_pulled_through_its_index(
    registry: TestClient, release_key: Any, ci_key: Any
) -> None:
    """CI signed the amd64 image (a trusted key the rule does not ask for), release signed the
    index: the image is accepted through the index, as one without CI's signature is."""
    index, (amd64, arm64) = await push_index(registry, "v1")
    await sign_image(registry, ci_key, amd64)
    await sign_image(registry, release_key, index)
    assert await pull(registry, "prod/app", amd64) == (200, "")
    assert await pull(registry, "prod/app", arm64) == (200, "")


async def test_another_trusted_signature_alone_is_refused_and_named(
    registry: TestClient, ci_key: Any
) -> None:
    _, (amd64, _) = await push_index(registry, "v1")
    await sign_image(registry, ci_key, amd64)
    assert await pull(registry, "prod/app", amd64) == (
        403,
        'rule "prod is signed by release": needs a signature by release; found 1 signature, '
        "by ci, not one of the required signers",
    )
