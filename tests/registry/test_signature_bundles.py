"""Sigstore bundles through the registry API: a keyed bundle (as cosign 3 writes it) pushed as an
OCI referrer of the image, found by its artifact type or only by its layer media type, verified on
push; the pull is allowed. A rule asking for an attestation type counts only those."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec

from registry.context import CONTEXT
from tests.oci import OCI_MANIFEST, descriptor, push_blob, push_image
from tests.policies.test_signatures_bundles import COSIGN_SIGN, keyed_bundle, statement
from tests.signing import pull, start_trusting

BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY = "application/vnd.oci.empty.v1+json"
SLSA = "https://slsa.dev/provenance/v1"
ATTESTED = "registry.example/attested/web"  # the repository the attestations are signed for

POLICY = """\
version: 1
trust:
  keys:
    release: {pem_file: release.pub}
rules:
  - name: prod is signed by release
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      signature: {any_of: [release]}
  - name: attested has provenance
    match: {repositories: ["attested/**"], on: [pull]}
    require:
      signature: {any_of: [release], predicate_type: "https://slsa.dev/provenance/v1"}
"""


@pytest.fixture
def release_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def gated(start_client: Any, tmp_path: Path, release_key: Any) -> TestClient:
    return await start_trusting(start_client, tmp_path, POLICY, {"release": release_key})


async def push_bundle_referrer(
    client: TestClient, name: str, image: str, bundle: bytes, *, artifact_type: bool = True
) -> str:
    """Push a bundle as cosign 3 does: empty config, one bundle layer, `subject` = the image."""
    await push_blob(client, name, b"{}")
    await push_blob(client, name, bundle)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(EMPTY, b"{}"),
        "layers": [descriptor(BUNDLE_TYPE, bundle)],
        "subject": {"mediaType": OCI_MANIFEST, "digest": image, "size": 0},
    }
    if artifact_type:
        manifest["artifactType"] = BUNDLE_TYPE
    body = json.dumps(manifest).encode()
    digest = descriptor("", body)["digest"]
    resp = await client.put(
        f"/v2/{name}/manifests/{digest}", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201, await resp.text()
    return digest


@pytest.mark.parametrize("artifact_type", [True, False], ids=["artifact-type", "layer-type"])
async def test_a_bundle_referrer_allows_the_pull(
    gated: TestClient, release_key: Any, artifact_type: bool
) -> None:
    digest, _ = await push_image(gated, "prod/web", "v1")
    assert (await pull(gated, "prod/web", "v1"))[0] == 403
    bundle, _ = keyed_bundle(release_key, statement(digest))
    await push_bundle_referrer(
        gated, "prod/web", digest, json.dumps(bundle).encode(), artifact_type=artifact_type
    )
    assert await pull(gated, "prod/web", "v1") == (200, "")
    rows = await gated.app[CONTEXT].db.read(
        "SELECT signer, valid, detail FROM signature_proofs WHERE image_digest = ?", (digest,)
    )
    assert [(r[0], r[1], json.loads(r[2])["predicate_type"]) for r in rows] == [
        ("release", 1, COSIGN_SIGN)
    ]


async def test_a_bundle_for_another_image_is_denied(gated: TestClient, release_key: Any) -> None:
    digest, _ = await push_image(gated, "prod/web", "v1")
    other, _ = await push_image(gated, "prod/web", "v2", layers=[b"two"])
    bundle, _ = keyed_bundle(release_key, statement(other))
    await push_bundle_referrer(gated, "prod/web", digest, json.dumps(bundle).encode())
    status, message = await pull(gated, "prod/web", "v1")
    assert status == 403
    assert message == (
        'rule "prod is signed by release": needs a signature by release; '
        f"found 1 signature, for another image ({other[:19]}…)"
    )


async def test_a_predicate_type_rule_counts_only_that_attestation(
    gated: TestClient, release_key: Any
) -> None:
    digest, _ = await push_image(gated, "attested/web", "v1")
    signed, _ = keyed_bundle(release_key, statement(digest, name=ATTESTED))
    await push_bundle_referrer(gated, "attested/web", digest, json.dumps(signed).encode())
    status, message = await pull(gated, "attested/web", "v1")
    assert status == 403
    assert message == (
        'rule "attested has provenance": needs a signature by release (a '
        f"{SLSA} attestation); found 1 signature, by release but {COSIGN_SIGN}, not {SLSA}"
    )
    provenance, _ = keyed_bundle(release_key, statement(digest, SLSA, ATTESTED))
    await push_bundle_referrer(gated, "attested/web", digest, json.dumps(provenance).encode())
    assert await pull(gated, "attested/web", "v1") == (200, "")
