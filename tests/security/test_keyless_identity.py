"""Keyless cosign signatures from a private Fulcio and Rekor made here: an attacker with a valid
certificate of their own (another e-mail, another OIDC issuer) or a Rekor entry logging another
certificate must not pass as the trusted identity. Each refusal is checked word for word."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from policies.signatures.cosign import verify_layer
from policies.signatures.keyless import ISSUER_V1, ISSUER_V2, certificate_identity
from policies.signatures.simple_signing import (
    BUNDLE_ANNOTATION,
    CERTIFICATE_ANNOTATION,
    CHAIN_ANNOTATION,
    SIGNATURE_ANNOTATION,
)
from policies.signatures.trust import TrustConfig, parse_trust
from tests.policies.test_signatures_cosign import rekor_bundle
from tests.signing import public_pem, sign, simple_signing_payload, spki

ISSUER = "https://issuer.acme.example"
EMAIL = "release@acme.example"
IMAGE = "sha256:" + "ef" * 32
NOW = datetime.datetime.now(datetime.UTC)
#: rekor_bundle logs at this time: the Fulcio certificates below are valid around it.
LOGGED = datetime.datetime.fromtimestamp(1_700_000_000, datetime.UTC)


def _der_utf8(text: str) -> bytes:
    """A DER UTF8String: short-form length below 128 bytes, long form (0x81, 0x82) above."""
    raw = text.encode()
    if len(raw) < 0x80:
        return bytes([0x0C, len(raw)]) + raw
    size = len(raw).to_bytes((len(raw).bit_length() + 7) // 8, "big")
    return bytes([0x0C, 0x80 | len(size)]) + size + raw


class Fulcio:
    """A private Fulcio: a root CA issuing ten-minute code-signing certificates."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-fulcio")])
        self.name = name
        self.root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(LOGGED - datetime.timedelta(days=365))
            .not_valid_after(NOW + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_usage(ca=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self,
        signer: ec.EllipticCurvePrivateKey,
        email: str,
        issuer: str,
        *,
        subject: str | None = None,
        at: datetime.datetime = LOGGED,
        issuer_value: bytes | None = None,
        extra: tuple[x509.UnrecognizedExtension, ...] = (),
    ) -> x509.Certificate:
        """A leaf naming `email` (SAN) and the OIDC `issuer` (Fulcio's v2 extension, or the raw
        `issuer_value`), valid for ten minutes around `at`; `subject` is its CN if given."""
        name = _name(subject) if subject else x509.Name([])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(self.name)
            .public_key(signer.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(at - datetime.timedelta(minutes=1))
            .not_valid_after(at + datetime.timedelta(minutes=9))
            .add_extension(_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
            # RFC 5280: the SAN is critical exactly when the subject is empty (Fulcio's case).
            .add_extension(
                x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=not subject
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        for extension in extra:
            builder = builder.add_extension(extension, critical=False)
        if issuer:
            value = issuer_value or _der_utf8(issuer)
            builder = builder.add_extension(x509.UnrecognizedExtension(ISSUER_V2, value), False)
        return builder.sign(self.key, hashes.SHA256())


_ATTRIBUTES = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
}


def _name(subject: str) -> x509.Name:
    """`CN=a,O=b` (or a bare common name) as an x509 name."""
    if "=" not in subject:
        subject = f"CN={subject}"
    pairs = [part.split("=", 1) for part in subject.split(",")]
    return x509.Name([x509.NameAttribute(_ATTRIBUTES[k], v) for k, v in pairs])


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def write_trusted_root(folder: Path, fulcio: Fulcio, rekor: ec.EllipticCurvePrivateKey) -> None:
    """A Sigstore trusted root naming the private Fulcio and Rekor."""
    der = fulcio.root.public_bytes(serialization.Encoding.DER)
    document = {
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [
            {
                "baseUrl": "https://rekor.acme.example",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": base64.b64encode(spki(rekor)).decode(),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": "2020-01-01T00:00:00Z"},
                },
                "logId": {"keyId": base64.b64encode(hashlib.sha256(spki(rekor)).digest()).decode()},
            }
        ],
        "certificateAuthorities": [
            {
                "subject": {"organization": "acme", "commonName": "acme-fulcio"},
                "uri": "https://fulcio.acme.example",
                "certChain": {"certificates": [{"rawBytes": base64.b64encode(der).decode()}]},
                "validFor": {"start": "2020-01-01T00:00:00Z"},
            }
        ],
        "ctlogs": [],
        "timestampAuthorities": [],
    }
    (folder / "acme_root.json").write_text(json.dumps(document))


def hashedrekord_of(certificate_pem: bytes, payload: bytes, signature: bytes) -> str:
    """The Rekor entry body cosign's keyless signing logs: the certificate, not a key."""
    body = {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()}},
            "signature": {
                "content": base64.b64encode(signature).decode(),
                "publicKey": {"content": base64.b64encode(certificate_pem).decode()},
            },
        },
    }
    return base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    fulcio, rekor = Fulcio(), ec.generate_private_key(ec.SECP256R1())
    write_trusted_root(tmp_path, fulcio, rekor)
    return {"folder": tmp_path, "fulcio": fulcio, "rekor": rekor}


def trust_identity(folder: Path, **identity: str) -> TrustConfig:
    entry = {"issuer": ISSUER, "trusted_root": "acme_root.json", **identity}
    config, problems = parse_trust({"identities": {"release": entry}}, folder)
    assert not problems, problems
    return config


def refused(reason: str, signer: str = "release") -> str:
    """The detail of a keyless layer no trusted signer accepts, `signer` saying why."""
    return f"by no trusted signer ({signer}: {reason})"


def trusted(world: dict[str, Any]) -> TrustConfig:
    """Trust exactly EMAIL from ISSUER, certified by the private Fulcio."""
    return trust_identity(world["folder"], subject=EMAIL)


def keyless_layer(
    world: dict[str, Any],
    email: str = EMAIL,
    issuer: str = ISSUER,
    logged_certificate: bytes | None = None,
    issuer_value: bytes | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A keyless `.sig` layer (payload, annotations) by `email` from `issuer`, logged in Rekor
    (the entry naming `logged_certificate`, by default the signing certificate itself)."""
    signer = ec.generate_private_key(ec.SECP256R1())
    leaf = world["fulcio"].issue(signer, email, issuer, issuer_value=issuer_value)
    certificate = _pem(leaf)
    payload = simple_signing_payload("registry.example/prod/web", IMAGE)
    signature = sign(signer, payload)
    body = hashedrekord_of(logged_certificate or certificate, payload, signature)
    return payload, {
        SIGNATURE_ANNOTATION: base64.b64encode(signature).decode(),
        CERTIFICATE_ANNOTATION: certificate.decode(),
        CHAIN_ANNOTATION: _pem(world["fulcio"].root).decode(),
        BUNDLE_ANNOTATION: rekor_bundle(world["rekor"], body),
    }


def test_the_trusted_identity_proves(world: dict[str, Any]) -> None:
    payload, annotations = keyless_layer(world)
    [finding] = verify_layer(
        trust_identity(world["folder"], subject=EMAIL), IMAGE, payload, annotations
    )
    assert (finding.valid, finding.signer, finding.detail) == (
        True,
        "release",
        f"{EMAIL} from {ISSUER}",
    )


@pytest.mark.parametrize(
    ("email", "issuer"),
    [
        ("mallory@evil.example", ISSUER),  # a valid certificate for someone else
        (EMAIL, "https://accounts.evil.example"),  # the same e-mail from another issuer
        ("release@acme.example.evil.example", ISSUER),  # the trusted name as a prefix
    ],
    ids=["other-email", "other-issuer", "prefixed-email"],
)
def test_another_identity_is_refused_and_named(
    world: dict[str, Any], email: str, issuer: str
) -> None:
    payload, annotations = keyless_layer(world, email=email, issuer=issuer)
    [finding] = verify_layer(
        trust_identity(world["folder"], subject=EMAIL), IMAGE, payload, annotations
    )
    assert not finding.valid
    assert finding.detail == refused(f"by an unknown identity ({email} from {issuer})")


def test_a_subject_regex_matches_only_what_it_says(world: dict[str, Any]) -> None:
    config = trust_identity(world["folder"], subject_regex=r"^[a-z]+@acme\.example$")
    payload, annotations = keyless_layer(world)
    assert [f.valid for f in verify_layer(config, IMAGE, payload, annotations)] == [True]
    payload, annotations = keyless_layer(world, email="release@acme.example.evil.example")
    [finding] = verify_layer(config, IMAGE, payload, annotations)
    assert finding.detail == refused(
        f"by an unknown identity (release@acme.example.evil.example from {ISSUER})"
    )


def test_a_rekor_entry_logging_another_certificate_is_refused(world: dict[str, Any]) -> None:
    # The attacker reuses a genuine Rekor entry of the trusted identity's certificate for a
    # signature made with their own certificate (or the other way round): the SET verifies, the
    # signature verifies, only the certificate in the entry tells them apart.
    other = _pem(world["fulcio"].issue(ec.generate_private_key(ec.SECP256R1()), EMAIL, ISSUER))
    payload, annotations = keyless_layer(world, logged_certificate=other)
    [finding] = verify_layer(
        trust_identity(world["folder"], subject=EMAIL), IMAGE, payload, annotations
    )
    assert not finding.valid
    assert finding.detail == refused("the Rekor entry logs another certificate")


def test_a_rekor_entry_logging_a_bare_key_is_refused(world: dict[str, Any]) -> None:
    payload, annotations = keyless_layer(
        world, logged_certificate=public_pem(ec.generate_private_key(ec.SECP256R1()))
    )
    [finding] = verify_layer(
        trust_identity(world["folder"], subject=EMAIL), IMAGE, payload, annotations
    )
    assert finding.detail == refused("the Rekor entry logs another certificate")


def test_a_certificate_from_another_ca_is_refused(world: dict[str, Any]) -> None:
    payload, annotations = keyless_layer({**world, "fulcio": Fulcio()})
    [finding] = verify_layer(
        trust_identity(world["folder"], subject=EMAIL), IMAGE, payload, annotations
    )
    assert not finding.valid
    assert finding.detail.startswith(
        refused("certificate chain does not verify at 2023-11-14T22:13:20Z")[:-1]
    )


def test_a_long_issuer_is_read_whole(world: dict[str, Any]) -> None:
    # Past 127 bytes the DER length takes the long form: the issuer is still read exactly.
    long_issuer = "https://issuer.acme.example/" + "x" * 200
    config = trust_identity(world["folder"], subject=EMAIL, issuer=long_issuer)
    payload, annotations = keyless_layer(world, issuer=long_issuer)
    [finding] = verify_layer(config, IMAGE, payload, annotations)
    assert (finding.valid, finding.detail) == (True, f"{EMAIL} from {long_issuer}")
    # The trusted issuer as a prefix of a longer one is another issuer.
    payload, annotations = keyless_layer(world, issuer=ISSUER + ".evil.example")
    [finding] = verify_layer(trusted(world), IMAGE, payload, annotations)
    assert finding.detail == refused(f"by an unknown identity ({EMAIL} from {ISSUER}.evil.example)")


@pytest.mark.parametrize(
    "value",
    [
        b"\x13\x1b" + ISSUER.encode(),  # a PrintableString, not a UTF8String
        b"\x04\x1b" + ISSUER.encode(),  # an OCTET STRING (a tag below UTF8String's)
        b"\x0c\x7f" + ISSUER.encode(),  # a length running past the end
        b"\x0c",  # no length at all
    ],
    ids=["printable-string", "octet-string", "truncated", "no-length"],
)
def test_a_malformed_issuer_extension_names_no_issuer(world: dict[str, Any], value: bytes) -> None:
    payload, annotations = keyless_layer(world, issuer_value=value)
    [finding] = verify_layer(trusted(world), IMAGE, payload, annotations)
    assert not finding.valid
    assert finding.detail == refused(f"by an unknown identity ({EMAIL})")


def test_the_second_trusted_root_is_tried_when_the_first_does_not_verify(
    world: dict[str, Any], tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    write_trusted_root(other, Fulcio(), ec.generate_private_key(ec.SECP256R1()))
    (world["folder"] / "other_root.json").write_text((other / "acme_root.json").read_text())
    section = {
        "identities": {
            "elsewhere": {"issuer": ISSUER, "subject": EMAIL, "trusted_root": "other_root.json"},
            "release": {"issuer": ISSUER, "subject": EMAIL, "trusted_root": "acme_root.json"},
        }
    }
    config, problems = parse_trust(section, world["folder"])
    assert not problems
    payload, annotations = keyless_layer(world)
    assert [(f.valid, f.signer) for f in verify_layer(config, IMAGE, payload, annotations)] == [
        (True, "release")
    ]


def test_a_keyless_signature_without_trusted_identities_is_unknown(world: dict[str, Any]) -> None:
    payload, annotations = keyless_layer(world)
    [finding] = verify_layer(TrustConfig(), IMAGE, payload, annotations)
    assert not finding.valid
    assert finding.detail.startswith("by an unknown certificate (sha256:")


@pytest.mark.parametrize(
    ("annotation", "value", "reason"),
    [
        (CERTIFICATE_ANNOTATION, "not a certificate", "the certificate annotations are not PEM"),
        (BUNDLE_ANNOTATION, "{not json", "the Rekor bundle annotation is not cosign's bundle JSON"),
        (BUNDLE_ANNOTATION, "{}", "the Rekor bundle annotation is not cosign's bundle JSON"),
        (BUNDLE_ANNOTATION, "[]", "the Rekor bundle annotation is not cosign's bundle JSON"),
    ],
    ids=["certificate", "bundle-not-json", "bundle-empty", "bundle-list"],
)
def test_malformed_keyless_annotations_are_refused_with_a_reason(
    world: dict[str, Any], annotation: str, value: str, reason: str
) -> None:
    payload, annotations = keyless_layer(world)
    annotations[annotation] = value
    [finding] = verify_layer(trusted(world), IMAGE, payload, annotations)
    assert not finding.valid
    assert finding.detail.startswith(refused(reason)[:-1])


def _rebody(annotations: dict[str, str], world: dict[str, Any], change: Any) -> None:
    """Re-log the layer with its Rekor entry body changed by `change` (the SET re-signed)."""
    document = json.loads(annotations[BUNDLE_ANNOTATION])
    body = json.loads(base64.b64decode(document["Payload"]["body"]))
    change(body)
    encoded = base64.b64encode(json.dumps(body).encode()).decode()
    annotations[BUNDLE_ANNOTATION] = rekor_bundle(world["rekor"], encoded)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda b: b.update(kind="dsse"), "Rekor entry kind 'dsse' is not hashedrekord"),
        (lambda b: b.update(kind="rekord"), "Rekor entry kind 'rekord' is not hashedrekord"),
        (lambda b: b.pop("spec"), "the Rekor entry body is not a hashedrekord v0.0.1"),
        (
            lambda b: b["spec"]["signature"].pop("publicKey"),
            "the Rekor entry body is not a hashedrekord v0.0.1",
        ),
        (
            lambda b: b["spec"]["data"]["hash"].update(algorithm="sha1"),
            "the Rekor entry logs another payload",
        ),
        (
            lambda b: b["spec"]["data"]["hash"].update(algorithm="sha512"),
            "the Rekor entry logs another payload",
        ),
        (
            lambda b: b["spec"]["data"]["hash"].update(value="0" * 64),
            "the Rekor entry logs another payload",
        ),
        (
            lambda b: b["spec"]["data"]["hash"].update(value="f" * 64),
            "the Rekor entry logs another payload",
        ),
    ],
    ids=["dsse", "rekord", "no-spec", "no-key", "sha1", "sha512", "low-hash", "high-hash"],
)
def test_a_rekor_entry_body_for_something_else_is_refused(
    world: dict[str, Any], change: Any, reason: str
) -> None:
    payload, annotations = keyless_layer(world)
    _rebody(annotations, world, change)
    [finding] = verify_layer(trusted(world), IMAGE, payload, annotations)
    assert not finding.valid
    assert finding.detail == refused(reason)


# -- a private PKI (`trust.certificates`): the CA and, when given, the subject ------------------


def pki_layer(fulcio: Fulcio, subject: str) -> tuple[bytes, dict[str, str]]:
    """A `.sig` layer signed with a certificate for CN=`subject` by `fulcio` (as a private
    CA), valid now (the time of the call, not of the module's import: a long suite outlives a
    ten-minute certificate), not logged (a private PKI has no Rekor)."""
    signer = ec.generate_private_key(ec.SECP256R1())
    leaf = fulcio.issue(
        signer, EMAIL, ISSUER, subject=subject, at=datetime.datetime.now(datetime.UTC)
    )
    payload = simple_signing_payload("registry.example/prod/web", IMAGE)
    return payload, {
        SIGNATURE_ANNOTATION: base64.b64encode(sign(signer, payload)).decode(),
        CERTIFICATE_ANNOTATION: _pem(leaf).decode(),
        CHAIN_ANNOTATION: _pem(fulcio.root).decode(),
    }


def trust_ca(fulcio: Fulcio, subject: str | None) -> TrustConfig:
    entry: dict[str, Any] = {"pem": _pem(fulcio.root).decode()}
    if subject is not None:
        entry["subject"] = subject
    config, problems = parse_trust({"certificates": {"corp": entry}})
    assert not problems, problems
    return config


def test_a_private_ca_with_a_subject_accepts_only_that_subject() -> None:
    ca = Fulcio()
    payload, annotations = pki_layer(ca, "release-signer")
    [finding] = verify_layer(trust_ca(ca, "CN=release-signer"), IMAGE, payload, annotations)
    assert (finding.valid, finding.signer) == (True, "corp")
    payload, annotations = pki_layer(ca, "intern-laptop")
    [finding] = verify_layer(trust_ca(ca, "CN=release-signer"), IMAGE, payload, annotations)
    assert not finding.valid
    assert finding.detail == refused(
        "certificate subject 'CN=intern-laptop' is not trusted", "corp"
    )
    # Without a subject, the CA alone decides.
    [finding] = verify_layer(trust_ca(ca, None), IMAGE, payload, annotations)
    assert (finding.valid, finding.signer) == (True, "corp")


def test_a_private_ca_refuses_another_cas_certificate() -> None:
    payload, annotations = pki_layer(Fulcio(), "release-signer")
    [finding] = verify_layer(trust_ca(Fulcio(), None), IMAGE, payload, annotations)
    assert not finding.valid
    assert finding.detail.startswith(
        "by no trusted signer (corp: certificate chain does not verify at "
    )


def test_a_private_ca_refuses_a_certificate_annotation_that_is_not_pem_with_the_reason() -> None:
    """The private CA's check of a malformed certificate annotation is a reason of that CA,
    never a traceback."""
    ca = Fulcio()
    payload, annotations = pki_layer(ca, "release-signer")
    annotations[CERTIFICATE_ANNOTATION] = "not a certificate"
    [finding] = verify_layer(trust_ca(ca, None), IMAGE, payload, annotations)
    assert (finding.valid, finding.detail) == (
        False,
        refused("the certificate annotations are not PEM certificates", "corp"),
    )


GITHUB_REPOSITORY = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.5")


def test_only_the_issuer_extensions_name_the_issuer(world: dict[str, Any]) -> None:
    # Fulcio certificates carry other 1.3.6.1.4.1.57264.1.* values (repository, workflow...):
    # one of them spelling the trusted issuer must not stand in for a missing issuer.
    signer = ec.generate_private_key(ec.SECP256R1())
    spoof = x509.UnrecognizedExtension(GITHUB_REPOSITORY, ISSUER.encode())
    leaf = world["fulcio"].issue(signer, EMAIL, "", extra=(spoof,))
    payload = simple_signing_payload("registry.example/prod/web", IMAGE)
    signature = sign(signer, payload)
    annotations = {
        SIGNATURE_ANNOTATION: base64.b64encode(signature).decode(),
        CERTIFICATE_ANNOTATION: _pem(leaf).decode(),
        CHAIN_ANNOTATION: _pem(world["fulcio"].root).decode(),
        BUNDLE_ANNOTATION: rekor_bundle(
            world["rekor"], hashedrekord_of(_pem(leaf), payload, signature)
        ),
    }
    [finding] = verify_layer(trusted(world), IMAGE, payload, annotations)
    assert not finding.valid
    assert finding.detail == refused(f"by an unknown identity ({EMAIL})")


def test_the_v1_issuer_extension_is_read(world: dict[str, Any]) -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    v1 = x509.UnrecognizedExtension(ISSUER_V1, ISSUER.encode())
    leaf = world["fulcio"].issue(signer, EMAIL, "", extra=(v1,))
    payload = simple_signing_payload("registry.example/prod/web", IMAGE)
    signature = sign(signer, payload)
    annotations = {
        SIGNATURE_ANNOTATION: base64.b64encode(signature).decode(),
        CERTIFICATE_ANNOTATION: _pem(leaf).decode(),
        CHAIN_ANNOTATION: _pem(world["fulcio"].root).decode(),
        BUNDLE_ANNOTATION: rekor_bundle(
            world["rekor"], hashedrekord_of(_pem(leaf), payload, signature)
        ),
    }
    [finding] = verify_layer(trusted(world), IMAGE, payload, annotations)
    assert (finding.valid, finding.detail) == (True, f"{EMAIL} from {ISSUER}")


@pytest.mark.parametrize(
    "subject",
    ["CN=release-signer", "CN=release-signer,O=Acme,OU=Interns"],
    ids=["fewer-names", "more-names"],
)
def test_a_private_ca_subject_must_match_exactly(subject: str) -> None:
    ca = Fulcio()
    payload, annotations = pki_layer(ca, subject)
    [finding] = verify_layer(trust_ca(ca, "CN=release-signer, O=Acme"), IMAGE, payload, annotations)
    assert not finding.valid
    assert finding.detail.startswith("by no trusted signer (corp: certificate subject ")
    assert finding.detail.endswith(" is not trusted)")
    # The same names in another order and spacing are the same subject.
    payload, annotations = pki_layer(ca, "O=Acme,CN=release-signer")
    [finding] = verify_layer(trust_ca(ca, "CN=release-signer, O=Acme"), IMAGE, payload, annotations)
    assert (finding.valid, finding.signer) == (True, "corp")


def test_the_second_private_ca_is_tried_when_the_first_does_not_verify() -> None:
    first, second = Fulcio(), Fulcio()
    section = {
        "certificates": {
            "first": {"pem": _pem(first.root).decode()},
            "second": {"pem": _pem(second.root).decode()},
        }
    }
    config, problems = parse_trust(section)
    assert not problems
    payload, annotations = pki_layer(second, "release-signer")
    assert [(f.valid, f.signer) for f in verify_layer(config, IMAGE, payload, annotations)] == [
        (True, "second")
    ]


def test_a_certificate_without_sans_names_no_subject() -> None:
    # Chain verification refuses such a leaf first; the identity reader must not raise on it.
    ca, signer = Fulcio(), ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("release-signer"))
        .issuer_name(ca.name)
        .public_key(signer.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=1))
        .not_valid_after(NOW + datetime.timedelta(minutes=9))
        .sign(ca.key, hashes.SHA256())
    )
    identity = certificate_identity(leaf)
    assert (identity.subjects, identity.issuer, identity.subject_dn) == (
        (),
        None,
        "CN=release-signer",
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("integratedTime", "1700000000"),
        ("integratedTime", 1700000000.0),
        ("logIndex", True),
        ("logIndex", "42"),
    ],
    ids=["time-string", "time-float", "index-bool", "index-string"],
)
def test_a_rekor_bundle_with_non_integer_time_or_index_is_refused(
    world: dict[str, Any], field: str, value: Any
) -> None:
    # Signed by the trusted Rekor key as it stands: only the type is wrong.
    payload, annotations = keyless_layer(world)
    entry = json.loads(annotations[BUNDLE_ANNOTATION])["Payload"]
    entry[field] = value
    timestamp = world["rekor"].sign(rfc8785.dumps(entry), ec.ECDSA(hashes.SHA256()))
    annotations[BUNDLE_ANNOTATION] = json.dumps(
        {"SignedEntryTimestamp": base64.b64encode(timestamp).decode(), "Payload": entry}
    )
    [finding] = verify_layer(trusted(world), IMAGE, payload, annotations)
    assert not finding.valid
    assert finding.detail == refused("the Rekor bundle annotation is not cosign's bundle JSON")


def test_a_rekor_entry_logging_a_broken_certificate_is_refused(world: dict[str, Any]) -> None:
    broken = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    payload, annotations = keyless_layer(world, logged_certificate=broken)
    [finding] = verify_layer(trusted(world), IMAGE, payload, annotations)
    assert not finding.valid
    assert finding.detail == refused("the Rekor entry logs a certificate that is not PEM")


@pytest.mark.parametrize("key_type", ["ed448", "x25519"])
def test_a_certificate_key_of_a_type_no_signature_is_checked_with_proves_nothing(
    key_type: str,
) -> None:
    """A trusted CA certified an Ed448 (or X25519) key: whoever copies that certificate into a
    `.sig` layer of their own, with any bytes for a signature, proves nothing."""
    from cryptography.hazmat.primitives.asymmetric import ed448, x25519

    ca = Fulcio()
    key = (
        ed448.Ed448PrivateKey.generate()
        if key_type == "ed448"
        else x25519.X25519PrivateKey.generate()
    )
    leaf = ca.issue(
        key,  # type: ignore[arg-type]
        EMAIL,
        ISSUER,
        subject="release-signer",
        at=datetime.datetime.now(datetime.UTC),
    )
    payload = simple_signing_payload("registry.example/prod/web", IMAGE)
    annotations = {
        SIGNATURE_ANNOTATION: base64.b64encode(b"\x01" * 64).decode(),
        CERTIFICATE_ANNOTATION: _pem(leaf).decode(),
        CHAIN_ANNOTATION: _pem(ca.root).decode(),
    }
    [finding] = verify_layer(trust_ca(ca, "CN=release-signer"), IMAGE, payload, annotations)
    assert not finding.valid
    assert finding.detail == refused(
        "the signature does not verify with the certificate's key", "corp"
    )


def _san_leaf(ca: Fulcio, signer: ec.EllipticCurvePrivateKey, san: bytes) -> x509.Certificate:
    """A leaf of `ca` for CN=release-signer, valid now, whose SAN extension holds `san` (the
    DER of a GeneralNames) as it is: names a certificate library may read but not accept."""
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name("release-signer"))
        .issuer_name(ca.name)
        .public_key(signer.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(minutes=9))
        .add_extension(_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
        .add_extension(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, san), False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
        .sign(ca.key, hashes.SHA256())
    )


def _der(tag: int, content: bytes) -> bytes:
    assert len(content) < 0x80
    return bytes([tag, len(content)]) + content


@pytest.mark.parametrize(
    ("name", "why"),
    [
        # iPAddress of 5 bytes: neither an address (4, 16) nor a network (8, 32).
        (_der(0x87, b"\x0a\x00\x00\x01\x05"), "does not appear to be an IPv4 or IPv6 address"),
        # A network whose host bits are set.
        (_der(0x87, b"\x0a\x00\x00\x01\xff\xff\x00\x00"), "10.0.0.1/16 has host bits set"),
        # x400Address: a name type the library does not read.
        (_der(0xA3, _der(0x30, b"")), "x400Address/EDIPartyName are not supported types"),
    ],
    ids=["an-address-of-5-bytes", "a-network-with-host-bits", "an-x400-address"],
)
def test_a_certificate_whose_names_cannot_be_read_is_refused_with_the_reason(
    name: bytes, why: str
) -> None:
    """A certificate a trusted CA signed, whose subject-alternative names the verifier reads
    only once the chain verified and then refuses (`ValueError`, or the library's own type for
    a name type it does not support): a reason of that CA, never a traceback."""
    ca = Fulcio()
    signer = ec.generate_private_key(ec.SECP256R1())
    leaf = _san_leaf(ca, signer, _der(0x30, name))
    payload = simple_signing_payload("registry.example/prod/web", IMAGE)
    annotations = {
        SIGNATURE_ANNOTATION: base64.b64encode(sign(signer, payload)).decode(),
        CERTIFICATE_ANNOTATION: _pem(leaf).decode(),
        CHAIN_ANNOTATION: _pem(ca.root).decode(),
    }
    [finding] = verify_layer(trust_ca(ca, None), IMAGE, payload, annotations)
    assert not finding.valid
    assert finding.detail.startswith(
        "by no trusted signer (corp: certificate chain does not verify at "
    )
    assert finding.detail.endswith(f"{why})")
