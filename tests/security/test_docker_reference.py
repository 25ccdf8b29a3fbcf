"""The signed reference must name this repository (`docker_reference`), as containers
policy.json's `matchRepoDigestOrExact`: on by default, honest for every signature kind.

An attacker with push rights to `prod/app` copies a signature made for another repository (the
same image pushed as `other/repo` and signed there), or relies on a signature that names no
repository at all, where the policy asked for one."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from tests.library.images import push
from tests.library.test_signed_by import POLICY as LIBRARY_POLICY
from tests.library.test_signed_by import PYTHON, current, sign_library, slim
from tests.oci import OCI_MANIFEST, descriptor, push_blob, push_image
from tests.policies.test_signatures_bundles import keyed_bundle, statement
from tests.policies.test_signatures_notation import _certificate, make_jws
from tests.registry.test_signature_bundles import push_bundle_referrer
from tests.signing import (
    public_pem,
    pull,
    push_cosign_signature,
    sign,
    simple_signing_payload,
    start_trusting,
)

POLICY = """\
version: 1
trust:
  keys:
    release: {{pem_file: release.pub}}
  certificates:
    corp-ca: {{pem_file: ca.pem}}
rules:
  - name: prod is signed
    match: {{repositories: ["prod/**"], on: [pull]}}
    require:
      signature: {{any_of: [release, corp-ca]{option}}}
"""

RULE = 'rule "prod is signed": needs a signature by release or corp-ca; found 1 signature, '
BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
NOTATION = "application/vnd.cncf.notary.signature"


@pytest.fixture
def release_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ca() -> tuple[Any, x509.Certificate, x509.Certificate]:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("Acme Root", root_key, "Acme Root", root_key, ca=True, days=3650)
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _certificate("release", key, "Acme Root", root_key, ca=False), root


async def start(
    start_client: Any, folder: Path, release_key: Any, ca: Any, option: str = ""
) -> TestClient:
    (folder / "release.pub").write_bytes(public_pem(release_key))
    (folder / "ca.pem").write_bytes(ca[2].public_bytes(serialization.Encoding.PEM))
    (folder / "policy.yaml").write_text(POLICY.format(option=option))
    return await start_client(policy={"file": str(folder / "policy.yaml"), "reload": False})


async def copied_sig(client: TestClient, key: Any) -> str:
    """prod/app:v1 with a `.sig` signed for `other/repo` (the same image, signed there)."""
    digest, _ = await push_image(client, "prod/app", "v1")
    payload = simple_signing_payload("registry.example/other/repo", digest)
    await push_cosign_signature(client, "prod/app", digest, payload, sign(key, payload))
    return digest


async def test_a_sig_signed_for_another_repository_is_refused_by_default(
    start_client: Any, tmp_path: Path, release_key: Any, ca: Any
) -> None:
    client = await start(start_client, tmp_path, release_key, ca)
    await copied_sig(client, release_key)
    assert await pull(client, "prod/app", "v1") == (
        403,
        RULE + "by release but for repository other/repo",
    )


async def test_a_rule_may_turn_the_reference_check_off(
    start_client: Any, tmp_path: Path, release_key: Any, ca: Any
) -> None:
    client = await start(start_client, tmp_path, release_key, ca, ", docker_reference: false")
    await copied_sig(client, release_key)
    assert await pull(client, "prod/app", "v1") == (200, "")


async def test_a_sig_signed_for_this_repository_counts_under_both_settings(
    start_client: Any, tmp_path: Path, release_key: Any, ca: Any
) -> None:
    client = await start(start_client, tmp_path, release_key, ca, ", docker_reference: true")
    digest, _ = await push_image(client, "prod/app", "v1")
    payload = simple_signing_payload("registry.example:5000/prod/app:v1", digest)
    await push_cosign_signature(client, "prod/app", digest, payload, sign(release_key, payload))
    assert await pull(client, "prod/app", "v1") == (200, "")


def digest_bundle(key: Any, image: str) -> bytes:
    """A keyed Sigstore bundle whose message signature signs the image digest alone (as
    sigstore-js `attach` makes them): it names no repository."""
    signed = bytes.fromhex(image[len("sha256:") :])
    signature = key.sign(signed, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return json.dumps(
        {
            "mediaType": BUNDLE_TYPE,
            "verificationMaterial": {
                "publicKey": {"hint": base64.b64encode(hashlib.sha256(spki).digest()).decode()},
                "tlogEntries": [],
            },
            "messageSignature": {
                "messageDigest": {
                    "algorithm": "SHA2_256",
                    "digest": base64.b64encode(signed).decode(),
                },
                "signature": base64.b64encode(signature).decode(),
            },
        }
    ).encode()


async def test_a_digest_only_bundle_counts_by_default(
    start_client: Any, tmp_path: Path, release_key: Any, ca: Any
) -> None:
    client = await start(start_client, tmp_path, release_key, ca)
    digest, _ = await push_image(client, "prod/app", "v1")
    await push_bundle_referrer(client, "prod/app", digest, digest_bundle(release_key, digest))
    assert await pull(client, "prod/app", "v1") == (200, "")


async def test_a_digest_only_bundle_does_not_satisfy_an_explicit_reference_check(
    start_client: Any, tmp_path: Path, release_key: Any, ca: Any
) -> None:
    client = await start(start_client, tmp_path, release_key, ca, ", docker_reference: true")
    digest, _ = await push_image(client, "prod/app", "v1")
    await push_bundle_referrer(client, "prod/app", digest, digest_bundle(release_key, digest))
    assert await pull(client, "prod/app", "v1") == (
        403,
        RULE + "by release but signs no repository name (docker_reference: true requires one)",
    )


@pytest.mark.parametrize(
    ("option", "name", "expected"),
    [
        ("", "registry.example/other/repo", "by release but for repository other/repo"),
        ("", "localhost:5000/prod/app", ""),
        ("", "app.tar", ""),  # not a repository name: the statement signs the digest only
        (", docker_reference: true", "registry.example/prod/app:v1", ""),
        (
            ", docker_reference: true",
            "app.tar",
            "by release but signs no repository name (docker_reference: true requires one)",
        ),
        (", docker_reference: false", "registry.example/other/repo", ""),
    ],
)
async def test_an_in_toto_subject_name_is_the_signed_reference(
    start_client: Any,
    tmp_path: Path,
    release_key: Any,
    ca: Any,
    option: str,
    name: str,
    expected: str,
) -> None:
    client = await start(start_client, tmp_path, release_key, ca, option)
    digest, _ = await push_image(client, "prod/app", "v1")
    bundle, _ = keyed_bundle(release_key, statement(digest, name=name))
    await push_bundle_referrer(client, "prod/app", digest, json.dumps(bundle).encode())
    assert await pull(client, "prod/app", "v1") == (
        (403, RULE + expected) if expected else (200, "")
    )


async def push_notation(client: TestClient, image: str, envelope: bytes) -> None:
    await push_blob(client, "prod/app", b"{}")
    await push_blob(client, "prod/app", envelope)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": NOTATION,
            "config": descriptor("application/vnd.oci.empty.v1+json", b"{}"),
            "layers": [descriptor("application/jose+json", envelope)],
            "subject": {"mediaType": OCI_MANIFEST, "digest": image, "size": 1},
        }
    ).encode()
    resp = await client.put(
        f"/v2/prod/app/manifests/{descriptor('', body)['digest']}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("", ""),
        (
            ", docker_reference: true",
            "by corp-ca but signs no repository name (docker_reference: true requires one)",
        ),
    ],
)
async def test_a_notation_signature_names_no_repository(
    start_client: Any, tmp_path: Path, release_key: Any, ca: Any, option: str, expected: str
) -> None:
    client = await start(start_client, tmp_path, release_key, ca, option)
    digest, _ = await push_image(client, "prod/app", "v1")
    key, leaf, root = ca
    await push_notation(client, digest, make_jws(key, [leaf, root], digest))
    assert await pull(client, "prod/app", "v1") == (
        (403, RULE + expected) if expected else (200, "")
    )


async def test_a_library_image_signed_for_another_repository_is_not_a_library_image(
    start_client: Any, tmp_path: Path
) -> None:
    ops = ec.generate_private_key(ec.SECP256R1())
    client = await start_trusting(start_client, tmp_path, LIBRARY_POLICY, {"ops": ops})
    assert (await push(client, "library/python", "3.12-slim", PYTHON)).status == 201
    # Signed by ops, for another repository, and copied here: the library tag does not move.
    payload = simple_signing_payload("localhost:5000/someone/python", PYTHON.digest)
    await push_cosign_signature(
        client, "library/python", PYTHON.digest, payload, sign(ops, payload)
    )
    assert await current(client) == []
    assert (await slim(client))["pending"] == {
        "digest": PYTHON.digest,
        "reason": "not signed by ops (by ops but for repository someone/python)",
    }
    await sign_library(client, ops, PYTHON.digest)
    assert await current(client) == [PYTHON.digest]
