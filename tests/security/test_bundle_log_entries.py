"""Sigstore bundles whose Rekor entry is genuine but proves something else: the entry logs
another payload, or the inclusion proof's checkpoint (signed by the trusted Rekor key) is for
another tree. The signature and the log key are real, only the binding is wrong."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from policies.signatures.bundles import verify_layer
from tests.policies.test_signatures_bundles import (
    IMAGE,
    dsse_entry_body,
    keyed_bundle,
    pem,
    promised_entry,
    proved_entry,
    statement,
    trust,
)
from tests.signing import write_rekor_root


@pytest.fixture
def rekor(tmp_path: Path) -> ec.EllipticCurvePrivateKey:
    """A private Rekor's key, published in `tmp_path/trusted_root.json`."""
    return write_rekor_root(tmp_path)


def strict(folder: Path, key: ec.EllipticCurvePrivateKey) -> Any:
    return trust({"keys": {"release": {"pem": pem(key), "rekor": "trusted_root.json"}}}, folder)


def logged_bundle(
    key: ec.EllipticCurvePrivateKey, logged_payload: bytes, make_entry: Any, rekor: Any
) -> bytes:
    """A bundle signing `statement(IMAGE)` whose Rekor entry logs `logged_payload` with this
    very signature."""
    bundle, signature = keyed_bundle(key, statement(IMAGE))
    body = dsse_entry_body(key, logged_payload, signature)
    bundle["verificationMaterial"]["tlogEntries"] = [make_entry(rekor, body)]
    return json.dumps(bundle).encode()


@pytest.mark.parametrize("make_entry", [promised_entry, proved_entry], ids=["set", "proof"])
def test_an_entry_logging_another_payload_is_refused(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey, make_entry: Any
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    # Harmless images the log really saw, whose statements hash below and above this one's.
    ours = hashlib.sha256(statement(IMAGE)).hexdigest()
    candidates = [statement("sha256:" + f"{i:02x}" * 32) for i in range(16)]
    lower = next(c for c in candidates if hashlib.sha256(c).hexdigest() < ours)
    higher = next(c for c in candidates if hashlib.sha256(c).hexdigest() > ours)
    for other in (lower, higher):
        [finding] = verify_layer(
            strict(tmp_path, key), IMAGE, logged_bundle(key, other, make_entry, rekor)
        )
        assert not finding.valid
        assert finding.detail == "the Rekor entry logs another payload"
    good = logged_bundle(key, statement(IMAGE), make_entry, rekor)
    assert [f.valid for f in verify_layer(strict(tmp_path, key), IMAGE, good)] == [True]


def _resign_checkpoint(entry: dict[str, Any], rekor: Any, size: str, root: bytes) -> None:
    """Replace the checkpoint with one for (`size`, `root`), validly signed by `rekor`."""
    note = f"rekor.example - 1\n{size}\n{base64.b64encode(root).decode()}\n"
    signature = rekor.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
    envelope = entry["inclusionProof"]["checkpoint"]["envelope"]
    hint = base64.b64decode(envelope.rsplit(" ", 1)[-1])[:4]
    line = f"\u2014 rekor.example {base64.b64encode(hint + signature).decode()}\n"
    entry["inclusionProof"]["checkpoint"]["envelope"] = note + "\n" + line


@pytest.mark.parametrize(
    "change", ["size", "smaller-size", "size-sorting-before", "root", "root-sorting-after"]
)
def test_a_checkpoint_for_another_tree_is_refused(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey, change: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bundle, signature = keyed_bundle(key, statement(IMAGE))
    entry = proved_entry(rekor, dsse_entry_body(key, statement(IMAGE), signature))
    root = base64.b64decode(entry["inclusionProof"]["rootHash"])
    # First the same checkpoint re-signed: it verifies, so only the change below is refused.
    _resign_checkpoint(entry, rekor, "7", root)
    bundle["verificationMaterial"]["tlogEntries"] = [entry]
    content = json.dumps(bundle).encode()
    assert [f.valid for f in verify_layer(strict(tmp_path, key), IMAGE, content)] == [True]
    if change == "size":
        _resign_checkpoint(entry, rekor, "8", root)
    elif change == "smaller-size":
        _resign_checkpoint(entry, rekor, "6", root)
    elif change == "size-sorting-before":  # larger, but "10" sorts before "7" as text
        _resign_checkpoint(entry, rekor, "10", root)
    elif change == "root-sorting-after":
        _resign_checkpoint(entry, rekor, "7", b"\xff" * 32)
    else:
        _resign_checkpoint(entry, rekor, "7", bytes(32))
    content = json.dumps(bundle).encode()
    [finding] = verify_layer(strict(tmp_path, key), IMAGE, content)
    assert not finding.valid
    assert finding.detail == "the Rekor checkpoint is for another tree"


def test_an_inclusion_proof_that_does_not_lead_to_its_root_is_refused(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bundle, signature = keyed_bundle(key, statement(IMAGE))
    entry = proved_entry(rekor, dsse_entry_body(key, statement(IMAGE), signature))
    # A root the attacker picks, with a checkpoint for it: the path no longer leads there.
    entry["inclusionProof"]["rootHash"] = base64.b64encode(bytes(32)).decode()
    _resign_checkpoint(entry, rekor, "7", bytes(32))
    bundle["verificationMaterial"]["tlogEntries"] = [entry]
    [finding] = verify_layer(strict(tmp_path, key), IMAGE, json.dumps(bundle).encode())
    assert finding.detail == "the Rekor inclusion proof does not lead to its root"
