"""Signing helpers shared by the signature and library tests: a registry started on a policy that
trusts some keys, cosign `.sig` manifests made here exactly as cosign writes them, and a pull that
reports the denial message."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from policies.signatures import simple_signing
from tests.oci import OCI_CONFIG, OCI_MANIFEST, descriptor, error_codes, push_blob


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The public half of `key`, PEM-encoded as a policy's `pem_file` holds it."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The DER SubjectPublicKeyInfo of `key`'s public half (what Rekor key ids hash)."""
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_rekor_root(folder: Path) -> ec.EllipticCurvePrivateKey:
    """A private Rekor's key, published in `folder/trusted_root.json`."""
    key = ec.generate_private_key(ec.SECP256R1())
    root = {
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [
            {
                "baseUrl": "https://rekor.example",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": base64.b64encode(spki(key)).decode(),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": "2020-01-01T00:00:00Z"},
                },
                "logId": {"keyId": base64.b64encode(hashlib.sha256(spki(key)).digest()).decode()},
            }
        ],
        "certificateAuthorities": [],
        "ctlogs": [],
        "timestampAuthorities": [],
    }
    (folder / "trusted_root.json").write_text(json.dumps(root))
    return key


async def start_trusting(
    start_client: Any,
    folder: Path,
    policy: str,
    keys: Mapping[str, ec.EllipticCurvePrivateKey],
) -> TestClient:
    """A registry enforcing `policy`, each key's public half written to `<name>.pub` beside it."""
    for name, key in keys.items():
        (folder / f"{name}.pub").write_bytes(public_pem(key))
    (folder / "policy.yaml").write_text(policy)
    return await start_client(policy={"file": str(folder / "policy.yaml"), "reload": False})


def simple_signing_payload(reference: str, digest: str) -> bytes:
    """The payload cosign signs (compact JSON, `optional` null)."""
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        },
        separators=(",", ":"),
    ).encode()


async def push_cosign_signature(
    client: TestClient, name: str, image: str, payload: bytes, signature: bytes
) -> str:
    """Push a `.sig` manifest as cosign does: a config naming the payload layer, one
    simplesigning layer with the signature annotation, tagged `sha256-<hex>.sig`."""
    config = json.dumps(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [descriptor("", payload)["digest"]]},
            "config": {},
        },
        separators=(",", ":"),
    ).encode()
    await push_blob(client, name, config)
    await push_blob(client, name, payload)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [
            descriptor(
                simple_signing.SIMPLE_SIGNING,
                payload,
                annotations={
                    simple_signing.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()
                },
            )
        ],
    }
    tag = image.replace(":", "-") + ".sig"
    resp = await client.put(
        f"/v2/{name}/manifests/{tag}",
        data=json.dumps(manifest, separators=(",", ":")).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201, await resp.text()
    return resp.headers["Docker-Content-Digest"]


def sign(key: ec.EllipticCurvePrivateKey, payload: bytes) -> bytes:
    """An ECDSA-P256/SHA-256 signature of `payload`, as cosign makes it."""
    return key.sign(payload, ec.ECDSA(hashes.SHA256()))


async def pull(client: TestClient, name: str, reference: str) -> tuple[int, str]:
    """Pull a manifest: (200, "") when allowed, else the status and the DENIED message."""
    resp = await client.get(f"/v2/{name}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
    if resp.status == 200:
        return 200, ""
    body = await resp.json()
    assert error_codes(body) == ["DENIED"]
    return resp.status, body["errors"][0]["message"]
