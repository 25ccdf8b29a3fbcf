"""Sigstore bundles that sign the image digest itself (`messageSignature`, what `cosign sign`
with a key writes as a bundle), attacked: a signature that does not verify under the trusted key,
a Rekor `hashedrekord` entry that logs another signature (whichever way it sorts) or another
digest, an entry of another kind shaped like a `hashedrekord` one, and a DSSE payload that is not
an in-toto statement. Each is refused with its reason; the genuine bundle next to it verifies.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from policies.signatures.bundles import verify_layer
from tests.policies.test_signatures_bundles import IMAGE, keyed_bundle, pem, promised_entry, trust
from tests.signing import write_rekor_root

DIGEST = bytes.fromhex(IMAGE[7:])


@pytest.fixture
def rekor(tmp_path: Path) -> ec.EllipticCurvePrivateKey:
    """A private Rekor's key, published in `tmp_path/trusted_root.json`."""
    return write_rekor_root(tmp_path)


def sign_digest(key: ec.EllipticCurvePrivateKey, digest: bytes = DIGEST) -> bytes:
    return key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def message_bundle(signature: bytes, entries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "verificationMaterial": {"publicKey": {"hint": ""}, "tlogEntries": entries or []},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": base64.b64encode(DIGEST).decode()},
            "signature": base64.b64encode(signature).decode(),
        },
    }


def verdict(config: Any, bundle: dict[str, Any]) -> tuple[bool, str]:
    [finding] = verify_layer(config, IMAGE, json.dumps(bundle).encode())
    return finding.valid, finding.signer if finding.valid else finding.detail  # type: ignore[return-value]


def test_a_message_signature_that_does_not_verify_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    assert verdict(config, message_bundle(sign_digest(key))) == (True, "release")
    other_digest = sign_digest(key, bytes(32))  # a genuine signature of something else
    stranger = sign_digest(ec.generate_private_key(ec.SECP256R1()))
    garbage = b"\x30\x06\x02\x01\x01\x02\x01\x01"  # DER, but not a signature of anything
    for signature in (other_digest, stranger, garbage, b"not DER at all"):
        valid, detail = verdict(config, message_bundle(signature))
        assert not valid
        assert detail.startswith("by an unknown key (sha256:"), detail


def hashedrekord_v1(kind: str, digest: bytes, signature: bytes, key: Any) -> bytes:
    """A Rekor `hashedrekord` 0.0.1 entry body (named `kind`)."""
    return json.dumps(
        {
            "apiVersion": "0.0.1",
            "kind": kind,
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": digest.hex()}},
                "signature": {
                    "content": base64.b64encode(signature).decode(),
                    "publicKey": {"content": base64.b64encode(pem(key).encode()).decode()},
                },
            },
        },
        separators=(",", ":"),
    ).encode()


def hashedrekord_v2(kind: str, digest: bytes, signature: bytes, key: Any) -> bytes:
    """A Rekor v2 `hashedrekord` 0.0.2 entry body (named `kind`)."""
    return json.dumps(
        {
            "apiVersion": "0.0.2",
            "kind": kind,
            "spec": {
                "hashedRekordV002": {
                    "data": {"algorithm": "SHA2_256", "digest": base64.b64encode(digest).decode()},
                    "signature": {
                        "content": base64.b64encode(signature).decode(),
                        "verifier": {"publicKeyDetails": "PKIX_ECDSA_P256_SHA_256"},
                    },
                }
            },
        },
        separators=(",", ":"),
    ).encode()


def logged(rekor: Any, body: bytes, kind: str) -> dict[str, Any]:
    entry = promised_entry(rekor, body)
    entry["kindVersion"] = {"kind": kind, "version": json.loads(body)["apiVersion"]}
    return entry


def other_signatures(key: Any, signature: bytes) -> tuple[bytes, bytes]:
    """Two more signatures of the image by `key`: one whose base64 sorts before `signature`'s,
    one after (ECDSA signatures are random: draw until both exist)."""
    mine = base64.b64encode(signature).decode()
    before = after = None
    while before is None or after is None:
        other = sign_digest(key)
        text = base64.b64encode(other).decode()
        if text < mine:
            before = other
        elif text > mine:
            after = other
    return before, after


@pytest.mark.parametrize("body", [hashedrekord_v1, hashedrekord_v2], ids=["v1", "v2"])
def test_a_hashedrekord_entry_must_log_this_signature_of_this_digest(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey, body: Any
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    strict = trust({"keys": {"release": {"pem": pem(key), "rekor": "trusted_root.json"}}}, tmp_path)
    signature = sign_digest(key)

    def with_entry(digest: bytes, logged_signature: bytes) -> tuple[bool, str]:
        entry = logged(rekor, body("hashedrekord", digest, logged_signature, key), "hashedrekord")
        return verdict(strict, message_bundle(signature, [entry]))

    assert with_entry(DIGEST, signature) == (True, "release")
    for other in other_signatures(key, signature):
        assert with_entry(DIGEST, other) == (False, "the Rekor entry logs another signature")
    assert with_entry(bytes(32), signature) == (False, "the Rekor entry logs another payload")
    assert with_entry(b"\xff" * 32, signature) == (False, "the Rekor entry logs another payload")


@pytest.mark.parametrize("kind", ["dsse", "intoto", "cose", "rekord", "hashedrekord2", "a"])
@pytest.mark.parametrize("body", [hashedrekord_v1, hashedrekord_v2], ids=["v1", "v2"])
def test_an_entry_of_another_kind_shaped_like_a_hashedrekord_is_refused(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey, body: Any, kind: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    strict = trust({"keys": {"release": {"pem": pem(key), "rekor": "trusted_root.json"}}}, tmp_path)
    signature = sign_digest(key)
    entry = logged(rekor, body(kind, DIGEST, signature, key), kind)
    assert verdict(strict, message_bundle(signature, [entry])) == (
        False,
        f"Rekor entry kind {kind!r} does not log this bundle's content",
    )


@pytest.mark.parametrize("payload", [b"not json", b"\xff\xfe", b"[]", b'{"subject": 3}', b"{}"])
def test_a_dsse_payload_that_is_not_an_in_toto_statement_is_refused(payload: bytes) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bundle, _ = keyed_bundle(key, payload)
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    assert verdict(config, bundle) == (False, "the DSSE payload is not an in-toto statement")


def test_an_ed25519_key_proves_no_message_signature() -> None:
    """Ed25519 signs messages, never digests: a trusted Ed25519 key cannot vouch for a
    signature over the image digest, whatever the signature bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    config = trust({"keys": {"release": {"pem": public.decode()}}})
    for signature in (key.sign(DIGEST), b"\x00" * 64):
        valid, detail = verdict(config, message_bundle(signature))
        assert not valid
        assert detail.startswith("by an unknown key (sha256:"), detail
