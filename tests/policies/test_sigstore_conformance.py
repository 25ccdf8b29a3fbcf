"""The sigstore-conformance `bundle-verify` cases, each through Trustyard's bundle verifier with
the verdict the suite expects (`_fail` cases must prove nothing).

A case signs an artifact (`artifact`, else `a.txt`): its sha256 stands in for the image digest
(a message signature must sign it; a DSSE statement must name it as a subject). The signer is the
case's `key.pub` (a trusted key whose Rekor entries must verify under the case's trusted root) or
its keyless identity (`identity`, `issuer`, default the conformance beacon) under the case's
`trusted_root.json`, default the public-good production root.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from policies.signatures.bundles import verify_layer
from policies.signatures.trust import parse_trust

CASES = Path(__file__).parent / "vectors" / "sigstore-conformance" / "bundle-verify"
IDENTITY = (
    "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/"
    ".github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main"
)
ISSUER = "https://token.actions.githubusercontent.com"


def _text(case: Path, name: str, default: str) -> str:
    file = case / name
    return file.read_text().strip() if file.exists() else default


def _trust_section(case: Path) -> dict[str, Any]:
    root = "trusted_root.json" if (case / "trusted_root.json").exists() else "production"
    if (case / "key.pub").exists():
        return {"keys": {"conformance": {"pem_file": "key.pub", "rekor": root}}}
    return {
        "identities": {
            "conformance": {
                "issuer": _text(case, "issuer", ISSUER),
                "subject": _text(case, "identity", IDENTITY),
                "trusted_root": root,
            }
        }
    }


def verified(case: Path) -> tuple[bool, str]:
    """Whether the case's bundle proves its artifact under its trust, and the findings' words."""
    artifact = case / "artifact" if (case / "artifact").exists() else CASES / "a.txt"
    digest = "sha256:" + hashlib.sha256(artifact.read_bytes()).hexdigest()
    trust, problems = parse_trust(_trust_section(case), case)
    if problems:
        return False, f"trust refused: {problems}"
    findings = verify_layer(trust, digest, (case / "bundle.sigstore.json").read_bytes())
    words = "; ".join(f.describe() for f in findings)
    return any(f.valid and f.signer == "conformance" for f in findings), words


@pytest.mark.parametrize(
    "case", sorted(p.name for p in CASES.iterdir() if p.is_dir()), ids=lambda name: name
)
def test_bundle_verify_case(case: str) -> None:
    expected = not case.endswith("_fail")
    ok, words = verified(CASES / case)
    assert ok is expected, words
    # A refusal must come from what is wrong with the case, not from a kind left unsupported.
    assert not any(word in words for word in UNSUPPORTED), words


#: How a verifier says it does not handle a log entry kind: never a reason here.
UNSUPPORTED = ("only supported for", "Unsupported DSSE log entry type", "Unsupported")
