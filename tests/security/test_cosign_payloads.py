"""Keyed cosign `.sig` layers an attacker with push rights can write: a signature of another
image, a payload of another kind, malformed JSON or base64, a Rekor entry naming another
signature or key. Every one proves nothing, with its reason, and never raises."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from policies.signatures.cosign import verify_layer
from policies.signatures.references import repository_of
from policies.signatures.simple_signing import (
    BUNDLE_ANNOTATION,
    SIGNATURE_ANNOTATION,
    SimpleSigningPayload,
)
from policies.signatures.trust import TrustConfig, parse_trust
from tests.policies.test_signatures_cosign import hashedrekord, rekor_bundle
from tests.signing import public_pem, sign, simple_signing_payload, write_rekor_root

LOW = "sha256:" + "00" * 32
HIGH = "sha256:" + "ff" * 32


def trust_key(key: ec.EllipticCurvePrivateKey, rekor_root: Path | None = None) -> TrustConfig:
    entry: dict[str, Any] = {"pem": public_pem(key).decode()}
    if rekor_root is not None:
        entry["rekor"] = rekor_root.name
    config, problems = parse_trust(
        {"keys": {"release": entry}}, rekor_root.parent if rekor_root else Path(".")
    )
    assert not problems, problems
    return config


def layer(key: ec.EllipticCurvePrivateKey, payload: bytes) -> dict[str, str]:
    return {SIGNATURE_ANNOTATION: base64.b64encode(sign(key, payload)).decode()}


@pytest.mark.parametrize(("signed", "pulled"), [(LOW, HIGH), (HIGH, LOW)], ids=["low", "high"])
def test_a_signature_of_another_image_proves_nothing(signed: str, pulled: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    payload = simple_signing_payload("registry.example/prod/web", signed)
    [finding] = verify_layer(trust_key(key), pulled, payload, layer(key, payload))
    assert not finding.valid
    assert finding.detail == f"by release but for another image ({signed[:19]}…)"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[]", "not a cosign signature (not a cosign simple signing payload)"),
        (b"{}", "not a cosign signature (not a cosign simple signing payload)"),
        (b'{"critical": []}', "not a cosign signature (not a cosign simple signing payload)"),
        (b"\xff\xfe", "not a cosign signature (not a cosign simple signing payload)"),
        (
            json.dumps(
                {
                    "critical": {
                        "identity": {"docker-reference": "registry.example/prod/web"},
                        "image": {"docker-manifest-digest": LOW},
                        "type": "atomic container signature",
                    }
                }
            ).encode(),
            "not a cosign signature (payload type is 'atomic container signature', not "
            "'cosign container image signature')",
        ),
        (
            json.dumps(
                {
                    "critical": {
                        "identity": {"docker-reference": "registry.example/prod/web"},
                        "image": {"docker-manifest-digest": LOW},
                        "type": "dosign container image signature",
                    }
                }
            ).encode(),
            "not a cosign signature (payload type is 'dosign container image signature', not "
            "'cosign container image signature')",
        ),
        (
            simple_signing_payload("registry.example/prod/web", LOW).replace(
                f'"{LOW}"'.encode(), b"123"
            ),
            "not a cosign signature (payload digest and reference must be strings)",
        ),
        (
            simple_signing_payload("registry.example/prod/web", LOW).replace(
                b'"registry.example/prod/web"', b"123"
            ),
            "not a cosign signature (payload digest and reference must be strings)",
        ),
    ],
    ids=[
        "list",
        "empty",
        "critical-list",
        "not-utf8",
        "atomic-type",
        "later-type",
        "digest-number",
        "reference-number",
    ],
)
def test_a_payload_that_is_not_a_cosign_signature_proves_nothing(
    payload: bytes, reason: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    [finding] = verify_layer(trust_key(key), LOW, payload, layer(key, payload))
    assert not finding.valid
    assert finding.detail == reason


@pytest.mark.parametrize(
    "encoded",
    ["@@not base64@@", "c2lnbmF0dXJl!", "sïgnature"],
    ids=["symbols", "trailing-junk", "non-ascii"],
)
def test_a_signature_annotation_that_is_not_base64_is_refused(encoded: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    payload = simple_signing_payload("registry.example/prod/web", LOW)
    [finding] = verify_layer(trust_key(key), LOW, payload, {SIGNATURE_ANNOTATION: encoded})
    assert not finding.valid
    assert finding.detail == "dev.cosignproject.cosign/signature is not base64"


def test_a_signature_with_junk_around_valid_base64_is_refused() -> None:
    # Lenient decoding would drop the junk and accept the very same signature bytes: the
    # annotation must be exactly base64.
    key = ec.generate_private_key(ec.SECP256R1())
    payload = simple_signing_payload("registry.example/prod/web", LOW)
    encoded = "*" + layer(key, payload)[SIGNATURE_ANNOTATION]
    [finding] = verify_layer(trust_key(key), LOW, payload, {SIGNATURE_ANNOTATION: encoded})
    assert finding.detail == "dev.cosignproject.cosign/signature is not base64"


def test_the_optional_section_is_kept_only_when_it_is_a_mapping() -> None:
    document = json.loads(simple_signing_payload("registry.example/prod/web", LOW))
    document["optional"] = {"creator": "ci"}
    assert SimpleSigningPayload.parse(json.dumps(document).encode()).optional == {"creator": "ci"}
    document["optional"] = ["creator"]
    assert SimpleSigningPayload.parse(json.dumps(document).encode()).optional is None


@pytest.mark.parametrize(
    ("reference", "repository"),
    [
        ("registry/app:v1", "registry/app"),  # a first part sorting after "localhost"
        ("acme/app", "acme/app"),  # and one sorting before it
        ("localhost/app", "app"),
        ("registry.example/app", "app"),
        ("registry:5000/app", "app"),
    ],
)
def test_only_a_host_is_taken_off_a_reference(reference: str, repository: str) -> None:
    assert repository_of(reference) == repository


# -- keyed signatures logged in Rekor (`rekor:` on the key) ------------------------------------


def _logged(tmp_path: Path, change: Any) -> tuple[TrustConfig, bytes, dict[str, str]]:
    rekor = write_rekor_root(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    payload = simple_signing_payload("registry.example/prod/web", LOW)
    signature = sign(key, payload)
    body = json.loads(base64.b64decode(hashedrekord(key, payload, signature)))
    change(body)
    encoded = base64.b64encode(json.dumps(body).encode()).decode()
    annotations = {
        SIGNATURE_ANNOTATION: base64.b64encode(signature).decode(),
        BUNDLE_ANNOTATION: rekor_bundle(rekor, encoded),
    }
    return trust_key(key, tmp_path / "trusted_root.json"), payload, annotations


def _set(path: tuple[str, ...], value: str) -> Any:
    def change(body: dict[str, Any]) -> None:
        holder = body
        for step in path[:-1]:
            holder = holder[step]
        holder[path[-1]] = value

    return change


SIGNATURE = ("spec", "signature", "content")
KEY = ("spec", "signature", "publicKey", "content")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda body: None, None),
        (_set(SIGNATURE, base64.b64encode(b"\x00" * 70).decode()), "logs another signature"),
        (_set(SIGNATURE, base64.b64encode(b"\xff" * 70).decode()), "logs another signature"),
        (
            _set(KEY, base64.b64encode(b"-----BEGIN PUBLIC KEY-----\nA").decode()),
            "logs another key",
        ),
        (_set(KEY, base64.b64encode(b"\xff").decode()), "logs another key"),
    ],
    ids=["genuine", "low-signature", "high-signature", "low-key", "high-key"],
)
def test_a_rekor_entry_must_log_this_signature_by_this_key(
    tmp_path: Path, change: Any, reason: str | None
) -> None:
    trust, payload, annotations = _logged(tmp_path, change)
    [finding] = verify_layer(trust, LOW, payload, annotations)
    if reason is None:
        assert (finding.valid, finding.signer) == (True, "release")
    else:
        assert not finding.valid
        assert (
            finding.detail
            == f"by release, but without a valid Rekor entry: the Rekor entry {reason}"
        )


def test_a_key_without_its_rekor_entry_does_not_stop_the_search_for_other_signers(
    tmp_path: Path,
) -> None:
    """One key trusted under two names, `logged` (with `rekor:`) first and `offline` (without)
    after: a layer without a Rekor bundle proves nothing for `logged` and still proves
    `offline`."""
    write_rekor_root(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = public_pem(key).decode()
    config, problems = parse_trust(
        {
            "keys": {
                "logged": {"pem": pem, "rekor": "trusted_root.json"},
                "offline": {"pem": pem},
            }
        },
        tmp_path,
    )
    assert not problems, problems
    assert list(config.keys) == ["logged", "offline"]
    payload = simple_signing_payload("registry.example/prod/web", LOW)
    found = verify_layer(config, LOW, payload, layer(key, payload))
    assert [(f.valid, f.signer) for f in found] == [(True, "offline")]
