"""The `signature` rule through the registry API: push an image, push a cosign `.sig` manifest
made here exactly as cosign writes it, pull allowed; another key, another digest, a swapped
payload: pull denied with what was required and what was found. Proofs are recorded on push and
a pull costs no cryptography once verified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec

from policies.signatures import cosign as cosign_module
from registry.context import CONTEXT
from tests.oci import push_image
from tests.signing import (
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
    release: {pem_file: release.pub}
  identities:
    gha-release: {issuer: "https://token.actions.githubusercontent.com",
                  subject_regex: "^https://github.com/acme/.+/.github/workflows/release.yml@refs/tags/v"}
rules:
  - name: prod is signed by release
    match: {repositories: ["prod/**"], on: [push, pull]}
    require:
      signature: {any_of: [release, gha-release]}
"""

RULE = 'rule "prod is signed by release": needs a signature by release or gha-release; '


@pytest.fixture
def release_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def gated(start_client: Any, tmp_path: Path, release_key: Any) -> TestClient:
    return await start_trusting(start_client, tmp_path, POLICY, {"release": release_key})


async def test_unsigned_image_is_pushed_and_denied_at_pull(gated: TestClient) -> None:
    await push_image(gated, "prod/web", "v1")  # push is accepted: signed after
    status, message = await pull(gated, "prod/web", "v1")
    assert status == 403
    assert message == RULE + "found no signature"
    await push_image(gated, "dev/web", "v1")  # the rule does not match dev/**
    assert await pull(gated, "dev/web", "v1") == (200, "")


async def test_signed_by_release_pull_allowed(gated: TestClient, release_key: Any) -> None:
    digest, _ = await push_image(gated, "prod/web", "v1")
    assert (await pull(gated, "prod/web", "v1"))[0] == 403
    payload = simple_signing_payload("localhost:5000/prod/web", digest)
    await push_cosign_signature(gated, "prod/web", digest, payload, sign(release_key, payload))
    assert await pull(gated, "prod/web", "v1") == (200, "")
    assert await pull(gated, "prod/web", digest) == (200, "")
    # cosign verify reads the signature manifest itself: not an image, the rule does not apply.
    assert (await pull(gated, "prod/web", digest.replace(":", "-") + ".sig"))[0] == 200
    # The proof is recorded, valid, by release.
    db = gated.app[CONTEXT].db
    rows = await db.read(
        "SELECT signer, valid FROM signature_proofs WHERE repository = ? AND image_digest = ?",
        ("prod/web", digest),
    )
    assert rows == [("release", 1)]


async def test_another_key_is_denied_with_the_unknown_key(gated: TestClient) -> None:
    digest, _ = await push_image(gated, "prod/web", "v1")
    payload = simple_signing_payload("localhost:5000/prod/web", digest)
    other = ec.generate_private_key(ec.SECP256R1())
    await push_cosign_signature(gated, "prod/web", digest, payload, sign(other, payload))
    status, message = await pull(gated, "prod/web", "v1")
    assert status == 403
    assert message.startswith(RULE + "found 1 signature, by an unknown key (sha256:")
    assert message.endswith("…)")


async def test_a_signature_for_another_digest_is_denied(
    gated: TestClient, release_key: Any
) -> None:
    digest, _ = await push_image(gated, "prod/web", "v1")
    other_digest, _ = await push_image(gated, "prod/web", "v2", layers=[b"other"])
    payload = simple_signing_payload("localhost:5000/prod/web", other_digest)
    # Signed by the right key, but for v2, stored as v1's signature.
    await push_cosign_signature(gated, "prod/web", digest, payload, sign(release_key, payload))
    status, message = await pull(gated, "prod/web", "v1")
    assert status == 403
    assert message == RULE + (
        f"found 1 signature, by release but for another image ({other_digest[:19]}…)"
    )


async def test_a_swapped_payload_is_denied(gated: TestClient, release_key: Any) -> None:
    digest, _ = await push_image(gated, "prod/web", "v1")
    signed = simple_signing_payload("localhost:5000/prod/web", "sha256:" + "0" * 64)
    swapped = simple_signing_payload("localhost:5000/prod/web", digest)
    await push_cosign_signature(gated, "prod/web", digest, swapped, sign(release_key, signed))
    status, message = await pull(gated, "prod/web", "v1")
    assert status == 403
    assert message.startswith(RULE + "found 1 signature, by an unknown key (sha256:")


async def test_a_pull_costs_no_crypto_once_verified(
    gated: TestClient, release_key: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest, _ = await push_image(gated, "prod/web", "v1")
    payload = simple_signing_payload("localhost:5000/prod/web", digest)
    await push_cosign_signature(gated, "prod/web", digest, payload, sign(release_key, payload))

    def no_crypto(*args: Any, **kwargs: Any) -> bool:
        raise AssertionError("a pull verified a signature")

    monkeypatch.setattr(cosign_module, "verify_with_key", no_crypto)
    # A new evidence version (another push to the repository) forces a fresh decision: it is
    # taken from the recorded proofs.
    await push_image(gated, "prod/web", "v9", layers=[b"nine"])
    for _ in range(3):
        assert await pull(gated, "prod/web", "v1") == (200, "")


async def test_a_signature_pushed_before_the_image_is_verified_at_pull(
    gated: TestClient, release_key: Any
) -> None:
    # Proofs missing (e.g. signed before the policy existed) are verified at the first pull.
    digest, _ = await push_image(gated, "prod/web", "v1")
    payload = simple_signing_payload("localhost:5000/prod/web", digest)
    await push_cosign_signature(gated, "prod/web", digest, payload, sign(release_key, payload))
    db = gated.app[CONTEXT].db
    async with db.transaction() as conn:
        await conn.execute("DELETE FROM signature_proofs")
    await gated.app[CONTEXT].policy.evidence_arrived("prod/web")
    assert await pull(gated, "prod/web", "v1") == (200, "")
