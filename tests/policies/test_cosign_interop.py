"""cosign interop details: base64 read as Go reads it (cosign and Rekor decode with Go's
`base64.StdEncoding`, which skips carriage returns and line feeds), and a refusal that names the
real failure of each configured signer (a keyless failure is not hidden behind a private CA's).

Vectors: containers/image's `dir-img-cosign-fulcio-rekor-valid` (see vectors/SOURCES.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policies.signatures.cosign import verify_layer
from policies.signatures.simple_signing import BUNDLE_ANNOTATION, SIGNATURE_ANNOTATION, go_b64decode
from policies.signatures.trust import TrustConfig, parse_trust

VECTORS = Path(__file__).parent / "vectors" / "containers-image"
FULCIO = VECTORS / "dir-img-cosign-fulcio-rekor-valid"
IMAGE = json.loads((FULCIO / "payload.json").read_text())["critical"]["image"][
    "docker-manifest-digest"
]
GITHUB = "https://github.com/login/oauth"


def trust(section: dict[str, object]) -> TrustConfig:
    config, problems = parse_trust(section, VECTORS)
    assert not problems, problems
    return config


def annotations() -> dict[str, str]:
    return dict(json.loads((FULCIO / "layer-descriptor.json").read_text())["annotations"])


def wrapped(text: str, width: int, newline: str) -> str:
    return newline.join(text[i : i + width] for i in range(0, len(text), width))


SIGNER = trust({"identities": {"mitr": {"issuer": GITHUB, "subject": "mitr@redhat.com"}}})


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_signature_annotation_with_line_breaks_decodes_as_go_does(newline: str) -> None:
    found = annotations()
    found[SIGNATURE_ANNOTATION] = wrapped(found[SIGNATURE_ANNOTATION], 16, newline) + newline
    payload = (FULCIO / "payload.json").read_bytes()
    assert [(f.valid, f.signer) for f in verify_layer(SIGNER, IMAGE, payload, found)] == [
        (True, "mitr")
    ]


def test_a_rekor_bundle_with_line_breaks_in_its_base64_decodes_as_go_does() -> None:
    found = annotations()
    bundle = json.loads(found[BUNDLE_ANNOTATION])
    bundle["SignedEntryTimestamp"] = wrapped(bundle["SignedEntryTimestamp"], 20, "\n")
    # (The body is signed by the SET as the string it is: Rekor never wraps it.)
    found[BUNDLE_ANNOTATION] = json.dumps(bundle)
    payload = (FULCIO / "payload.json").read_bytes()
    assert [(f.valid, f.signer) for f in verify_layer(SIGNER, IMAGE, payload, found)] == [
        (True, "mitr")
    ]


@pytest.mark.parametrize("bad", [" ", "\t", "*", "é"])
def test_other_characters_are_not_base64(bad: str) -> None:
    found = annotations()
    text = found[SIGNATURE_ANNOTATION]
    found[SIGNATURE_ANNOTATION] = text[:8] + bad + text[8:]
    payload = (FULCIO / "payload.json").read_bytes()
    [finding] = verify_layer(SIGNER, IMAGE, payload, found)
    assert not finding.valid
    assert finding.detail == f"{SIGNATURE_ANNOTATION} is not base64"


def test_go_b64decode_matches_go_std_encoding() -> None:
    assert go_b64decode("aGVs\nbG8=\r\n") == b"hello"
    assert go_b64decode(b"aG\rVsbG8=") == b"hello"
    for text in ("aGVsbG8", "aGVsbG8=x", "aGVs bG8=", "aGVsbG8=="):
        with pytest.raises(ValueError):
            go_b64decode(text)


def test_each_configured_signer_names_its_own_failure() -> None:
    config = trust(
        {
            "identities": {"ci": {"issuer": GITHUB, "subject": "someone@example.com"}},
            "certificates": {"corp-ca": {"pem_file": "pki_root_crts.pem"}},
        }
    )
    payload = (FULCIO / "payload.json").read_bytes()
    [finding] = verify_layer(config, IMAGE, payload, annotations())
    assert not finding.valid
    assert finding.detail.startswith(
        f"by no trusted signer (ci: by an unknown identity (mitr@redhat.com from {GITHUB}); "
        "corp-ca: certificate chain does not verify at "
    )


def test_a_keyless_failure_is_not_reported_as_the_private_ca_error() -> None:
    config = trust(
        {
            "identities": {"ci": {"issuer": GITHUB, "subject": "mitr@redhat.com"}},
            "certificates": {"corp-ca": {"pem_file": "pki_root_crts.pem"}},
        }
    )
    found = annotations()
    bundle = json.loads(found[BUNDLE_ANNOTATION])
    bundle["Payload"]["integratedTime"] += 1  # the SET no longer verifies
    found[BUNDLE_ANNOTATION] = json.dumps(bundle)
    payload = (FULCIO / "payload.json").read_bytes()
    [finding] = verify_layer(config, IMAGE, payload, found)
    assert finding.detail.startswith(
        "by no trusted signer (ci: the Rekor signed entry timestamp does not verify; corp-ca: "
    )
