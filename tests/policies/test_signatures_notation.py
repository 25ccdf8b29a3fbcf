"""Notation signatures: the notation-go JWS and COSE vectors (made by Notation), each failing when
one byte of payload, signature, digest or certificate changes; chains to a CA, expiry, signing
time and unknown critical headers with envelopes made here with `cryptography`."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from policies.signatures.findings import Finding
from policies.signatures.notation import COSE, JWS, PAYLOAD_TYPE, verify_layer
from policies.signatures.trust import TrustConfig, parse_trust

VECTORS = Path(__file__).parent / "vectors" / "notation-go"
IMAGE = "sha256:" + hashlib.sha256((VECTORS / "image-manifest.json").read_bytes()).hexdigest()
ALPINE = "CN=alpine,O=Notary,L=Seattle,ST=WA,C=US"


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def trust(section: dict[str, Any]) -> TrustConfig:
    config, problems = parse_trust(section)
    assert not problems, problems
    return config


def vector_certificate() -> x509.Certificate:
    document = json.loads((VECTORS / "jws_signature.sig").read_bytes())
    return x509.load_der_x509_certificate(base64.b64decode(document["header"]["x5c"][0]))


def pem_of(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


NOTARY = trust(
    {"certificates": {"notary": {"pem": pem_of(vector_certificate()), "subject": ALPINE}}}
)


def verdicts(findings: list[Finding]) -> list[tuple[bool, str | None]]:
    return [(f.valid, f.signer) for f in findings]


@pytest.mark.parametrize(("name", "media_type"), [("jws", JWS), ("cose", COSE)])
def test_real_envelopes_verify(name: str, media_type: str) -> None:
    content = (VECTORS / f"{name}_signature.sig").read_bytes()
    findings = verify_layer(NOTARY, IMAGE, media_type, content)
    assert verdicts(findings) == [(True, "notary")]
    assert findings[0].detail == f"by {ALPINE}"


@pytest.mark.parametrize(("name", "media_type"), [("jws", JWS), ("cose", COSE)])
def test_a_flipped_digest_fails(name: str, media_type: str) -> None:
    other = IMAGE[:-1] + ("0" if IMAGE[-1] != "0" else "1")
    [finding] = verify_layer(
        NOTARY, other, media_type, (VECTORS / f"{name}_signature.sig").read_bytes()
    )
    assert not finding.valid and finding.detail.startswith("for another image (sha256:19dbd2e4")


def jws_edit(field: str, at: int) -> bytes:
    document = json.loads((VECTORS / "jws_signature.sig").read_bytes())
    if field == "x5c":
        der = base64.b64decode(document["header"]["x5c"][0])
        document["header"]["x5c"][0] = base64.b64encode(flip(der, at % len(der))).decode()
    else:
        raw = unb64url(document[field])
        document[field] = b64url(flip(raw, at % len(raw)))
    return json.dumps(document).encode()


def cose_edit(index: int, at: int) -> bytes:
    message = cbor2.loads((VECTORS / "cose_signature.sig").read_bytes())
    parts = list(message.value)
    if index == 1:
        der = parts[1][33][0]
        parts[1] = {**parts[1], 33: [flip(der, at % len(der))]}
    else:
        parts[index] = flip(parts[index], at % len(parts[index]))
    return cbor2.dumps(cbor2.CBORTag(18, parts))


@pytest.mark.parametrize("field", ["payload", "signature", "x5c", "protected"])
@pytest.mark.parametrize("at", [3, 40, 200])
def test_a_flipped_jws_byte_fails(field: str, at: int) -> None:
    assert [f.valid for f in verify_layer(NOTARY, IMAGE, JWS, jws_edit(field, at))] == [False]


@pytest.mark.parametrize("index", [0, 1, 2, 3], ids=["protected", "x5chain", "payload", "sig"])
@pytest.mark.parametrize("at", [3, 40, 200])
def test_a_flipped_cose_byte_fails(index: int, at: int) -> None:
    assert [f.valid for f in verify_layer(NOTARY, IMAGE, COSE, cose_edit(index, at))] == [False]


def test_another_subject_is_refused() -> None:
    other = trust(
        {"certificates": {"notary": {"pem": pem_of(vector_certificate()), "subject": "CN=x"}}}
    )
    [finding] = verify_layer(other, IMAGE, JWS, (VECTORS / "jws_signature.sig").read_bytes())
    assert not finding.valid and finding.detail == f"by {ALPINE}, not the subject notary requires"


def test_an_unknown_certificate_is_named() -> None:
    [finding] = verify_layer(
        TrustConfig(), IMAGE, COSE, (VECTORS / "cose_signature.sig").read_bytes()
    )
    assert not finding.valid and finding.detail == f"by an unknown certificate ({ALPINE})"


# Envelopes made here: a CA, a signing certificate it issued, ES256.

NOW = datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
        ]
    )


def _certificate(
    subject: str, key: Any, issuer: str, issuer_key: Any, ca: bool, days: int = 30
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        ).add_extension(
            x509.SubjectAlternativeName([x509.DNSName("release.acme.example")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> tuple[Any, x509.Certificate, x509.Certificate]:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("Acme Root", root_key, "Acme Root", root_key, ca=True, days=3650)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate("release", key, "Acme Root", root_key, ca=False)
    return key, leaf, root


def make_jws(key: Any, chain: list[x509.Certificate], digest: str, **headers: Any) -> bytes:
    protected = {
        "alg": "ES256",
        "crit": ["io.cncf.notary.signingScheme"],
        "cty": PAYLOAD_TYPE,
        "io.cncf.notary.signingScheme": "notary.x509",
        "io.cncf.notary.signingTime": NOW.isoformat(),
        **headers,
    }
    payload = {
        "targetArtifact": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": 1,
        }
    }
    signing_input = (
        f"{b64url(json.dumps(protected).encode())}.{b64url(json.dumps(payload).encode())}"
    )
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    protected_b64, payload_b64 = signing_input.split(".")
    return json.dumps(
        {
            "protected": protected_b64,
            "payload": payload_b64,
            "header": {
                "x5c": [
                    base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
                    for c in chain
                ]
            },
            "signature": b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big")),
        }
    ).encode()


def test_a_chain_to_the_trusted_ca_verifies(pki: Any) -> None:
    key, leaf, root = pki
    config = trust(
        {"certificates": {"corp-ca": {"pem": pem_of(root), "subject": "CN=release, O=Acme"}}}
    )
    content = make_jws(key, [leaf, root], IMAGE)
    assert verdicts(verify_layer(config, IMAGE, JWS, content)) == [(True, "corp-ca")]
    # Another CA does not vouch for it.
    assert [f.valid for f in verify_layer(NOTARY, IMAGE, JWS, content)] == [False]


def test_an_expired_signature_is_refused(pki: Any) -> None:
    key, leaf, root = pki
    config = trust({"certificates": {"corp-ca": {"pem": pem_of(root)}}})
    expired = (NOW - datetime.timedelta(hours=1)).isoformat()
    content = make_jws(key, [leaf, root], IMAGE, **{"io.cncf.notary.expiry": expired})
    [finding] = verify_layer(config, IMAGE, JWS, content)
    assert not finding.valid and finding.detail.startswith("the signature expired at")


def test_a_signing_time_outside_the_certificate_is_refused(pki: Any) -> None:
    key, leaf, root = pki
    config = trust({"certificates": {"corp-ca": {"pem": pem_of(root)}}})
    early = (NOW - datetime.timedelta(days=5)).isoformat()
    content = make_jws(key, [leaf, root], IMAGE, **{"io.cncf.notary.signingTime": early})
    [finding] = verify_layer(config, IMAGE, JWS, content)
    assert not finding.valid and "outside the certificate's validity" in finding.detail


def test_a_plugin_header_cannot_be_verified(pki: Any) -> None:
    key, leaf, root = pki
    config = trust({"certificates": {"corp-ca": {"pem": pem_of(root)}}})
    content = make_jws(
        key,
        [leaf, root],
        IMAGE,
        crit=["io.cncf.notary.signingScheme", "io.cncf.notary.verificationPlugin"],
        **{"io.cncf.notary.verificationPlugin": "com.example.plugin"},
    )
    [finding] = verify_layer(config, IMAGE, JWS, content)
    assert finding.detail == (
        "needs headers this verifier does not implement (io.cncf.notary.verificationPlugin)"
    )


def test_a_certificate_not_valid_now_is_refused(pki: Any) -> None:
    key, leaf, root = pki
    config = trust({"certificates": {"corp-ca": {"pem": pem_of(root)}}})
    content = make_jws(key, [leaf, root], IMAGE)
    later = NOW + datetime.timedelta(days=60)
    [finding] = verify_layer(config, IMAGE, JWS, content, now=later)
    assert not finding.valid and "does not verify at" in finding.detail
