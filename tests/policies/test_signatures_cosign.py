"""cosign simple signing: the containers/image vectors (made by cosign) and keys of every type
generated here, each failing when one byte of payload, signature or digest changes."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from policies.signatures.cosign import verify_layer
from policies.signatures.keyless import (
    KeylessError,
    certificate_identity,
    verify_certificate_signature,
)
from policies.signatures.references import repository_of
from policies.signatures.simple_signing import (
    BUNDLE_ANNOTATION,
    SIGNATURE_ANNOTATION,
    SimpleSigningPayload,
    verify_with_key,
)
from policies.signatures.trust import (
    TrustConfig,
    TrustedKey,
    key_id,
    load_certificates,
    load_public_key,
    load_sigstore_root,
    parse_trust,
)
from tests.signing import public_pem, spki

VECTORS = Path(__file__).parent / "vectors" / "containers-image"


def vector(name: str) -> tuple[bytes, bytes, str]:
    """(payload, signature, image digest) of a containers/image vector."""
    folder = VECTORS / f"dir-img-cosign-{name}"
    payload = (folder / "payload.json").read_bytes()
    signature = base64.b64decode((folder / "signature.b64").read_text())
    image = "sha256:" + hashlib.sha256((folder / "image-manifest.json").read_bytes()).hexdigest()
    return payload, signature, image


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def trust_with(**keys: bytes) -> TrustConfig:
    config, problems = parse_trust(
        {"keys": {name: {"pem": pem.decode()} for name, pem in keys.items()}}
    )
    assert not problems
    return config


COSIGN_PUB = (VECTORS / "cosign.pub").read_bytes()


@pytest.mark.parametrize("name", ["valid", "valid-with-tag"])
def test_real_vectors_verify(name: str) -> None:
    payload, signature, image = vector(name)
    key = load_public_key(COSIGN_PUB)
    assert verify_with_key(key, payload, signature)
    assert SimpleSigningPayload.parse(payload).manifest_digest == image
    findings = verify_layer(
        trust_with(release=COSIGN_PUB),
        image,
        payload,
        {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()},
    )
    assert [(f.valid, f.signer) for f in findings] == [(True, "release")]


@pytest.mark.parametrize("at", [0, 50, 120, -3])
def test_a_flipped_payload_byte_fails(at: int) -> None:
    payload, signature, _ = vector("valid")
    assert not verify_with_key(
        load_public_key(COSIGN_PUB), flip(payload, at % len(payload)), signature
    )


@pytest.mark.parametrize("at", [5, 20, 40, -1])
def test_a_flipped_signature_byte_fails(at: int) -> None:
    payload, signature, _ = vector("valid")
    assert not verify_with_key(
        load_public_key(COSIGN_PUB), payload, flip(signature, at % len(signature))
    )


def test_a_flipped_digest_fails() -> None:
    payload, signature, image = vector("valid")
    other = image[:-1] + ("0" if image[-1] != "0" else "1")
    findings = verify_layer(
        trust_with(release=COSIGN_PUB),
        other,
        payload,
        {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()},
    )
    assert [f.valid for f in findings] == [False]
    assert findings[0].detail.startswith("by release but for another image (sha256:")


def test_modified_manifest_is_rejected() -> None:
    payload, signature, image = vector("modified-manifest")
    assert verify_with_key(load_public_key(COSIGN_PUB), payload, signature)  # the signature is good
    findings = verify_layer(
        trust_with(release=COSIGN_PUB),
        image,
        payload,
        {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()},
    )
    assert not findings[0].valid  # but it signs another manifest


def test_another_key_is_unknown() -> None:
    payload, signature, image = vector("valid")
    other = (VECTORS / "cosign2.pub").read_bytes()
    findings = verify_layer(
        trust_with(ci=other),
        image,
        payload,
        {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()},
    )
    assert not findings[0].valid and findings[0].detail.startswith("by an unknown key (sha256:")


def test_docker_reference_repository() -> None:
    assert (
        repository_of("192.168.64.2:5000/cosign-signed-single-sample")
        == "cosign-signed-single-sample"
    )
    assert repository_of("localhost:5000/prod/web:v1") == "prod/web"
    assert repository_of("registry.example.com/a/b@sha256:00") == "a/b"
    assert repository_of("library/busybox:latest") == "library/busybox"


def _keys() -> dict[str, object]:
    return {
        "ecdsa-p256": ec.generate_private_key(ec.SECP256R1()),
        "ecdsa-p384": ec.generate_private_key(ec.SECP384R1()),
        "rsa-pkcs1v15": rsa.generate_private_key(65537, 2048),
        "rsa-pss": rsa.generate_private_key(65537, 2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }


def _sign(kind: str, private: object, data: bytes) -> bytes:
    if kind == "ecdsa-p256":
        return private.sign(data, ec.ECDSA(hashes.SHA256()))  # type: ignore[attr-defined]
    if kind == "ecdsa-p384":
        return private.sign(data, ec.ECDSA(hashes.SHA384()))  # type: ignore[attr-defined]
    if kind == "rsa-pkcs1v15":
        return private.sign(data, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[attr-defined]
    if kind == "rsa-pss":
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return private.sign(data, pss, hashes.SHA256())  # type: ignore[attr-defined]
    return private.sign(data)  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", list(_keys()))
def test_generated_keys_of_every_type(kind: str) -> None:
    private = _keys()[kind]
    pem = private.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    image = "sha256:" + "ab" * 32
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": "localhost:5000/prod/web"},
                "image": {"docker-manifest-digest": image},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    signature = _sign(kind, private, payload)
    key = load_public_key(pem)
    assert verify_with_key(key, payload, signature)
    assert not verify_with_key(key, flip(payload, 10), signature)
    assert not verify_with_key(key, payload, flip(signature, len(signature) // 2))
    found = verify_layer(
        trust_with(release=pem),
        image,
        payload,
        {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()},
    )
    assert [(f.valid, f.signer, f.docker_reference) for f in found] == [
        (True, "release", "localhost:5000/prod/web")
    ]
    assert TrustedKey("release", key, key_id(key)).key_id.startswith("sha256:")


# -- keyless -----------------------------------------------------------------------------------


def keyless(name: str) -> dict[str, bytes]:
    folder = VECTORS / f"dir-img-cosign-{name}"
    files = {"cert": "cert.pem", "chain": "chain.pem", "payload": "payload.json"}
    out = {k: (folder / v).read_bytes() for k, v in files.items()}
    out["signature"] = base64.b64decode((folder / "signature.b64").read_text())
    if (folder / "rekor-bundle.json").exists():
        out["bundle"] = (folder / "rekor-bundle.json").read_bytes()
    return out


def _fulcio() -> tuple[list, dict]:
    rekor = load_public_key((VECTORS / "rekor.pub").read_bytes())
    return list(load_certificates((VECTORS / "fulcio_v1.crt.pem").read_bytes())), {
        key_id(rekor)[len("sha256:") :]: rekor
    }


def test_fulcio_rekor_vector_verifies_at_integrated_time() -> None:
    v = keyless("fulcio-rekor-valid")
    roots, rekor = _fulcio()
    result = verify_certificate_signature(
        v["cert"], v["chain"], roots, rekor, v["bundle"], v["signature"], v["payload"]
    )
    assert result.identity.subjects == ("mitr@redhat.com",)
    assert result.identity.issuer == "https://github.com/login/oauth"
    assert result.entry is not None
    assert result.entry.time == datetime.datetime(2023, 1, 20, 20, 51, 33, tzinfo=datetime.UTC)


def test_fulcio_rekor_vector_verifies_against_the_shipped_production_root() -> None:
    v = keyless("fulcio-rekor-valid")
    root = load_sigstore_root("production")
    result = verify_certificate_signature(
        v["cert"], v["chain"], root.fulcio, root.rekor, v["bundle"], v["signature"], v["payload"]
    )
    assert result.identity.subjects == ("mitr@redhat.com",)
    assert result.identity.issuer == "https://github.com/login/oauth"
    assert result.entry is not None
    assert result.entry.time == datetime.datetime(2023, 1, 20, 20, 51, 33, tzinfo=datetime.UTC)
    # Logged by production Rekor: its log id is the one the shipped root names.
    assert result.entry.log_id in root.rekor


@pytest.mark.parametrize(
    ("part", "reason"),
    [
        ("payload", "the Rekor entry logs another payload"),
        ("signature", "the Rekor entry logs another signature"),
        ("bundle", "the Rekor signed entry timestamp does not verify"),
        ("cert", "the Rekor entry logs another certificate"),
    ],
)
def test_fulcio_rekor_vector_fails_on_one_byte(part: str, reason: str) -> None:
    v = keyless("fulcio-rekor-valid")
    roots, rekor = _fulcio()
    if part == "bundle":
        document = json.loads(v["bundle"])
        document["Payload"]["integratedTime"] += 1
        v["bundle"] = json.dumps(document).encode()
    elif part == "cert":
        pem = v["cert"].decode()
        lines = pem.splitlines()
        middle = lines[5]
        lines[5] = middle[:10] + ("A" if middle[10] != "A" else "B") + middle[11:]
        v["cert"] = ("\n".join(lines) + "\n").encode()
    else:
        v[part] = flip(v[part], 30)
    with pytest.raises(KeylessError) as refused:
        verify_certificate_signature(
            v["cert"], v["chain"], roots, rekor, v["bundle"], v["signature"], v["payload"]
        )
    assert str(refused.value) == reason


def test_fulcio_certificate_is_expired_now_without_rekor() -> None:
    v = keyless("fulcio-rekor-valid")
    roots, _ = _fulcio()
    with pytest.raises(KeylessError, match=r"^certificate chain does not verify at .*not valid at"):
        verify_certificate_signature(
            v["cert"], v["chain"], roots, None, None, v["signature"], v["payload"]
        )


def test_pki_vector_verifies_against_its_root() -> None:
    v = keyless("pki-valid")
    roots = list(load_certificates((VECTORS / "pki_root_crts.pem").read_bytes()))
    result = verify_certificate_signature(
        v["cert"], v["chain"], roots, None, None, v["signature"], v["payload"]
    )
    assert "qiwan@redhat.com" in result.identity.subjects
    assert certificate_identity(result.leaf).issuer is None
    with pytest.raises(KeylessError):
        verify_certificate_signature(
            v["cert"], v["chain"], roots, None, None, v["signature"], flip(v["payload"], 7)
        )
    fulcio, _ = _fulcio()
    with pytest.raises(KeylessError):
        verify_certificate_signature(
            v["cert"], v["chain"], fulcio, None, None, v["signature"], v["payload"]
        )


# -- keyed, with `rekor:` ----------------------------------------------------------------------


def hashedrekord(signer: ec.EllipticCurvePrivateKey, payload: bytes, signature: bytes) -> str:
    """A Rekor `hashedrekord` 0.0.1 entry body (base64) logging `signature` of `payload`."""
    body = {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()}},
            "signature": {
                "content": base64.b64encode(signature).decode(),
                "publicKey": {"content": base64.b64encode(public_pem(signer)).decode()},
            },
        },
    }
    return base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()


def rekor_bundle(rekor: ec.EllipticCurvePrivateKey, body: str) -> str:
    """The `dev.sigstore.cosign/bundle` annotation cosign writes for a logged signature."""
    entry = {
        "body": body,
        "integratedTime": 1700000000,
        "logIndex": 42,
        "logID": hashlib.sha256(spki(rekor)).hexdigest(),
    }
    timestamp = rekor.sign(rfc8785.dumps(entry), ec.ECDSA(hashes.SHA256()))
    return json.dumps(
        {"SignedEntryTimestamp": base64.b64encode(timestamp).decode(), "Payload": entry}
    )


IMAGE = "sha256:" + "cd" * 32


def _signed_payload(signer: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": "localhost:5000/prod/web"},
                "image": {"docker-manifest-digest": IMAGE},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    return payload, signer.sign(payload, ec.ECDSA(hashes.SHA256()))


def _logged_trust(signer: ec.EllipticCurvePrivateKey, base: Path) -> TrustConfig:
    key = {"pem": public_pem(signer).decode(), "rekor": "trusted_root.json"}
    section = {"keys": {"release": key}}
    config, problems = parse_trust(section, base)
    assert not problems, problems
    return config


def _annotations(signature: bytes, bundle: str | None) -> dict[str, str]:
    annotations = {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()}
    if bundle is not None:
        annotations[BUNDLE_ANNOTATION] = bundle
    return annotations


def test_a_logged_key_signature_proves(tmp_path: Path, rekor: ec.EllipticCurvePrivateKey) -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    payload, signature = _signed_payload(signer)
    bundle = rekor_bundle(rekor, hashedrekord(signer, payload, signature))
    found = verify_layer(
        _logged_trust(signer, tmp_path), IMAGE, payload, _annotations(signature, bundle)
    )
    assert [(f.valid, f.signer) for f in found] == [(True, "release")]


def test_rekor_is_required_only_when_the_key_asks(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    payload, signature = _signed_payload(signer)
    found = verify_layer(
        trust_with(release=public_pem(signer)), IMAGE, payload, _annotations(signature, None)
    )
    assert [(f.valid, f.signer) for f in found] == [(True, "release")]
    found = verify_layer(
        _logged_trust(signer, tmp_path), IMAGE, payload, _annotations(signature, None)
    )
    assert [f.valid for f in found] == [False]
    assert found[0].detail == (
        "by release, but without a valid Rekor entry: "
        "the layer has no dev.sigstore.cosign/bundle annotation"
    )


def test_a_flipped_signed_entry_timestamp_byte_fails(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    payload, signature = _signed_payload(signer)
    document = json.loads(rekor_bundle(rekor, hashedrekord(signer, payload, signature)))
    timestamp = base64.b64decode(document["SignedEntryTimestamp"])
    document["SignedEntryTimestamp"] = base64.b64encode(flip(timestamp, 20)).decode()
    found = verify_layer(
        _logged_trust(signer, tmp_path),
        IMAGE,
        payload,
        _annotations(signature, json.dumps(document)),
    )
    assert [f.valid for f in found] == [False]
    assert found[0].detail == (
        "by release, but without a valid Rekor entry: "
        "the Rekor signed entry timestamp does not verify"
    )


def test_an_entry_for_another_signature_fails(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    payload, signature = _signed_payload(signer)
    _, other = _signed_payload(signer)  # ECDSA: another signature of the same payload
    bundle = rekor_bundle(rekor, hashedrekord(signer, payload, other))
    found = verify_layer(
        _logged_trust(signer, tmp_path), IMAGE, payload, _annotations(signature, bundle)
    )
    assert [f.valid for f in found] == [False]
    assert found[0].detail.endswith("the Rekor entry logs another signature")


def _body(signer: ec.EllipticCurvePrivateKey, payload: bytes, signature: bytes) -> dict:
    return json.loads(base64.b64decode(hashedrekord(signer, payload, signature)))


def _encoded(body: object) -> str:
    return base64.b64encode(json.dumps(body).encode()).decode()


def test_an_entry_body_of_another_shape_is_refused_with_a_reason(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    """A logged entry signed by the trusted log whose body is not a hashedrekord 0.0.1 (a hash
    that is not an object, a signature that is not base64, a `spec` that is a list) is refused
    with the reason, each one: never a traceback, never the layer judged malformed."""
    signer = ec.generate_private_key(ec.SECP256R1())
    payload, signature = _signed_payload(signer)
    trust = _logged_trust(signer, tmp_path)
    hash_text = _body(signer, payload, signature)
    hash_text["spec"]["data"]["hash"] = "sha256:" + hashlib.sha256(payload).hexdigest()
    not_base64 = _body(signer, payload, signature)
    not_base64["spec"]["signature"]["content"] = "not base64!"
    not_ascii = _body(signer, payload, signature)
    not_ascii["spec"]["signature"]["publicKey"]["content"] = "clé"
    spec_list = {**_body(signer, payload, signature), "spec": []}
    for body in (hash_text, not_base64, not_ascii, spec_list):
        bundle = rekor_bundle(rekor, _encoded(body))
        found = verify_layer(trust, IMAGE, payload, _annotations(signature, bundle))
        assert [(f.valid, f.signer, f.detail) for f in found] == [
            (
                False,
                None,
                "by release, but without a valid Rekor entry: "
                "the Rekor entry body is not a hashedrekord v0.0.1",
            )
        ], body


def test_an_entry_by_another_key_or_log_fails(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    stranger = ec.generate_private_key(ec.SECP256R1())
    payload, signature = _signed_payload(signer)
    trust = _logged_trust(signer, tmp_path)
    bundle = rekor_bundle(rekor, hashedrekord(stranger, payload, signature))
    found = verify_layer(trust, IMAGE, payload, _annotations(signature, bundle))
    assert found[0].detail.endswith("the Rekor entry logs another key")
    bundle = rekor_bundle(stranger, hashedrekord(signer, payload, signature))
    found = verify_layer(trust, IMAGE, payload, _annotations(signature, bundle))
    assert not found[0].valid and found[0].detail.endswith("is not in the trusted root")
