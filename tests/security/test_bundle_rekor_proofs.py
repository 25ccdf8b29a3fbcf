"""The inside of a Rekor proof in a keyed Sigstore bundle, attacked one rule at a time: an
inclusion proof whose index is the tree size (one past its last leaf), a proof that stops short
of the root, checkpoint notes with extension lines or without a root, a checkpoint whose
signature block holds a line that is not a signature, a log id or body that is not base64, and
an RSA-PSS message signature (the fallback after PKCS #1 v1.5). Each checkpoint below is signed
by the trusted Rekor key, so only the rule under test can refuse it; the genuine bundle next to
each attack verifies.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from policies.signatures.bundles import verify_layer
from tests.policies.test_signatures_bundles import (
    IMAGE,
    _path,
    _tree_hash,
    dsse_entry_body,
    keyed_bundle,
    pem,
    promised_entry,
    proved_entry,
    statement,
    trust,
)
from tests.signing import spki, write_rekor_root


@pytest.fixture
def rekor(tmp_path: Path) -> ec.EllipticCurvePrivateKey:
    """A private Rekor's key, published in `tmp_path/trusted_root.json`."""
    return write_rekor_root(tmp_path)


def strict(folder: Path, key: Any) -> Any:
    return trust({"keys": {"release": {"pem": pem(key), "rekor": "trusted_root.json"}}}, folder)


def checkpoint(rekor: Any, note: str, before: str = "") -> dict[str, str]:
    """A checkpoint for `note` (its lines, without the final newline) signed by `rekor`, with
    `before` (other lines) ahead of the signature line."""
    signed = note + "\n"
    signature = rekor.sign(signed.encode(), ec.ECDSA(hashes.SHA256()))
    line = f"\u2014 rekor.example {base64.b64encode(bytes(4) + signature).decode()}\n"
    return {"envelope": signed + "\n" + before + line}


def note_for(size: int, root: bytes, *extra: str) -> str:
    return "\n".join(["rekor.example - 1", str(size), base64.b64encode(root).decode(), *extra])


_SIGNED: dict[Any, tuple[dict[str, Any], bytes]] = {}


def signed(key: Any) -> tuple[dict[str, Any], bytes]:
    """One bundle per key (ECDSA signatures are randomised) and the Rekor entry body logging
    it."""
    if key not in _SIGNED:
        bundle, signature = keyed_bundle(key, statement(IMAGE))
        _SIGNED[key] = bundle, dsse_entry_body(key, statement(IMAGE), signature)
    return _SIGNED[key]


def verdict(folder: Path, key: Any, entry: dict[str, Any]) -> tuple[bool, str | None]:
    bundle = signed(key)[0]
    bundle["verificationMaterial"]["tlogEntries"] = [entry]
    [finding] = verify_layer(strict(folder, key), IMAGE, json.dumps(bundle).encode())
    return finding.valid, finding.signer if finding.valid else finding.detail


def entry_with_proof(
    rekor: Any, key: Any, index: int, size: int, path: list[bytes], root: bytes
) -> dict[str, Any]:
    """A Rekor entry logging the genuine bundle, with this proof and a checkpoint for it
    signed by the trusted Rekor key."""
    entry = proved_entry(rekor, body_of(key))
    entry["logIndex"] = str(index)
    entry["inclusionProof"] = {
        "logIndex": str(index),
        "treeSize": str(size),
        "rootHash": base64.b64encode(root).decode(),
        "hashes": [base64.b64encode(h).decode() for h in path],
        "checkpoint": checkpoint(rekor, note_for(size, root)),
    }
    return entry


def body_of(key: Any) -> bytes:
    return signed(key)[1]


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def test_an_inclusion_proof_for_the_leaf_one_past_the_tree_is_refused(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    # The genuine proof: leaf 5 of 7.
    leaves = [b"leaf %d" % i for i in range(7)]
    leaves[5] = body_of(key)
    genuine = entry_with_proof(rekor, key, 5, 7, _path(5, leaves), _tree_hash(leaves))
    assert verdict(tmp_path, key, genuine) == (True, "release")
    # Leaf 7 of a tree of 7: the fold of RFC 9162 would hash it in as the right-most leaf of a
    # tree that does not hold it (three siblings to the left, each taken as it comes).
    path = [hashlib.sha256(b"sibling %d" % i).digest() for i in range(3)]
    root = hashlib.sha256(b"\x00" + leaves[5]).digest()
    for sibling in path:
        root = _node(sibling, root)
    attack = entry_with_proof(rekor, key, 7, 7, path, root)
    assert verdict(tmp_path, key, attack) == (
        False,
        "the inclusion proof's index is outside the tree",
    )
    # Further past the tree, refused by the same bound, whatever the fold would make of it.
    for index in (8, 12):
        attack = entry_with_proof(rekor, key, index, 7, path, root)
        assert verdict(tmp_path, key, attack) == (
            False,
            "the inclusion proof's index is outside the tree",
        ), index


def test_an_inclusion_proof_that_stops_short_of_the_root_is_refused(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaves = [b"leaf %d" % i for i in range(7)]
    leaves[5] = body_of(key)
    # Two of the three hashes lead to the root of leaves 4 to 6, a subtree, not the tree of 7.
    subtree = _tree_hash(leaves[4:7])
    attack = entry_with_proof(rekor, key, 5, 7, _path(5, leaves)[:2], subtree)
    assert verdict(tmp_path, key, attack) == (False, "the inclusion proof is too short")


def test_an_inclusion_proof_that_goes_past_the_root_is_refused(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaves = [b"leaf %d" % i for i in range(7)]
    leaves[5] = body_of(key)
    # The genuine three hashes reach the root of the tree of 7; one more hash folded in on the
    # left leads to a root of the attacker's choosing, here with a checkpoint for it.
    extra = hashlib.sha256(b"one hash too many").digest()
    past = _node(extra, _tree_hash(leaves))
    attack = entry_with_proof(rekor, key, 5, 7, [*_path(5, leaves), extra], past)
    assert verdict(tmp_path, key, attack) == (False, "the inclusion proof is too long")


@pytest.mark.parametrize(
    "extra", [["Timestamp: 1689748607742585419"], ["Timestamp: 1", "another extension"]]
)
def test_a_checkpoint_with_extension_lines_verifies(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey, extra: list[str]
) -> None:
    """Rekor v1 checkpoints carry a `Timestamp:` line after the root (the signed note format
    allows extension lines); the root is the third line however many follow."""
    key = ec.generate_private_key(ec.SECP256R1())
    entry = proved_entry(rekor, body_of(key))
    proof = entry["inclusionProof"]
    root = base64.b64decode(proof["rootHash"])
    proof["checkpoint"] = checkpoint(rekor, note_for(7, root, *extra))
    assert verdict(tmp_path, key, entry) == (True, "release")
    # The same lines with another root in the third: still read from there.
    proof["checkpoint"] = checkpoint(rekor, note_for(7, bytes(32), *extra))
    assert verdict(tmp_path, key, entry) == (False, "the Rekor checkpoint is for another tree")


@pytest.mark.parametrize("note", ["rekor.example - 1\n7", "rekor.example - 1", ""])
def test_a_checkpoint_without_a_root_is_refused_with_a_reason(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey, note: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    entry = proved_entry(rekor, body_of(key))
    entry["inclusionProof"]["checkpoint"] = checkpoint(rekor, note)
    assert verdict(tmp_path, key, entry) == (False, "the Rekor checkpoint is for another tree")


WITNESS = "\u2014 witness.example " + base64.b64encode(bytes(4) + b"cosigned").decode() + "\n"


@pytest.mark.parametrize("before", ["- a line that is not a signature\n", WITNESS])
def test_a_checkpoint_signature_after_another_line_is_found(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey, before: str
) -> None:
    """Lines of the signature block that are not a trusted Rekor key's signature (another
    witness, text) are passed over; the trusted signature after them still counts, and without
    it the checkpoint is refused."""
    key = ec.generate_private_key(ec.SECP256R1())
    entry = proved_entry(rekor, body_of(key))
    proof = entry["inclusionProof"]
    note = note_for(7, base64.b64decode(proof["rootHash"]))
    proof["checkpoint"] = checkpoint(rekor, note, before)
    assert verdict(tmp_path, key, entry) == (True, "release")
    stranger = ec.generate_private_key(ec.SECP256R1())
    proof["checkpoint"] = checkpoint(stranger, note, before)
    assert verdict(tmp_path, key, entry) == (
        False,
        "the Rekor checkpoint is not signed by a trusted Rekor key",
    )


@pytest.mark.parametrize(
    ("field", "what"),
    [
        ("logId", "the Rekor log id"),
        ("canonicalizedBody", "the Rekor entry body"),
        ("signedEntryTimestamp", "the SET"),
    ],
)
@pytest.mark.parametrize("text", ["\u00e9t\u00e9", "AAAA\u0661", "not base64!"])
def test_a_log_entry_field_that_is_not_base64_is_named(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey, field: str, what: str, text: str
) -> None:
    """Non-ASCII text is not base64 either: the field is named, not "malformed"."""
    key = ec.generate_private_key(ec.SECP256R1())
    entry = promised_entry(rekor, body_of(key))
    assert verdict(tmp_path, key, entry) == (True, "release")
    if field == "logId":
        entry["logId"]["keyId"] = text
    elif field == "canonicalizedBody":
        entry["canonicalizedBody"] = text
    else:
        entry["inclusionPromise"]["signedEntryTimestamp"] = text
    assert verdict(tmp_path, key, entry) == (False, f"{what} is not base64")


def test_an_rsa_pss_message_signature_verifies_and_pkcs1_still_does() -> None:
    """A message signature by an RSA key may use PKCS #1 v1.5 or PSS (cosign and sigstore-js
    write either); a PSS signature by another key or of another digest proves nothing."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    digest = bytes.fromhex(IMAGE[7:])
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def bundle(signature: bytes) -> bytes:
        return json.dumps(
            {
                "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.2",
                "verificationMaterial": {"publicKey": {"hint": ""}, "tlogEntries": []},
                "messageSignature": {
                    "messageDigest": {
                        "algorithm": "SHA2_256",
                        "digest": base64.b64encode(digest).decode(),
                    },
                    "signature": base64.b64encode(signature).decode(),
                },
            }
        ).encode()

    prehashed = Prehashed(hashes.SHA256())
    for signature in (
        key.sign(digest, pss, prehashed),
        key.sign(digest, padding.PKCS1v15(), prehashed),
    ):
        [finding] = verify_layer(config, IMAGE, bundle(signature))
        assert (finding.valid, finding.signer) == (True, "release")
    for signature in (stranger.sign(digest, pss, prehashed), key.sign(bytes(32), pss, prehashed)):
        [finding] = verify_layer(config, IMAGE, bundle(signature))
        assert not finding.valid
        assert finding.detail.startswith("by an unknown key (sha256:"), finding.detail


def test_a_rekor_key_of_another_type_in_the_trusted_root_proves_nothing(tmp_path: Path) -> None:
    """Rekor signs with ECDSA or Ed25519; an RSA key listed as a Rekor log in the trusted root
    is not taken as one, so a signed entry timestamp "by" it is refused, whatever its bytes."""
    log = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = spki(log)  # type: ignore[arg-type]
    log_id = hashlib.sha256(der).digest()
    write_rekor_root(tmp_path)
    root = json.loads((tmp_path / "trusted_root.json").read_text())
    root["tlogs"][0]["publicKey"]["rawBytes"] = base64.b64encode(der).decode()
    root["tlogs"][0]["publicKey"]["keyDetails"] = "PKIX_RSA_PKCS1V15_2048_SHA256"
    root["tlogs"][0]["logId"]["keyId"] = base64.b64encode(log_id).decode()
    (tmp_path / "trusted_root.json").write_text(json.dumps(root))
    key = ec.generate_private_key(ec.SECP256R1())
    entry = promised_entry(ec.generate_private_key(ec.SECP256R1()), body_of(key))
    entry["logId"]["keyId"] = base64.b64encode(log_id).decode()
    canonical = rfc8785.dumps(
        {
            "body": entry["canonicalizedBody"],
            "integratedTime": 1700000000,
            "logID": log_id.hex(),
            "logIndex": 42,
        }
    )
    for signature in (log.sign(canonical, padding.PKCS1v15(), hashes.SHA256()), b"anything"):
        entry["inclusionPromise"]["signedEntryTimestamp"] = base64.b64encode(signature).decode()
        assert verdict(tmp_path, key, entry) == (
            False,
            f"Rekor log {log_id.hex()[:12]}… is not in the trusted root",
        )
