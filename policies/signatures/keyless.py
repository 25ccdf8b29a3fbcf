"""Keyless cosign signatures: a short-lived Fulcio certificate instead of a key, and a Rekor
signed entry timestamp (SET) proving when the signature was logged.

A keyless `.sig` layer carries, besides the signature, the annotations
`dev.sigstore.cosign/certificate` (PEM leaf), `dev.sigstore.cosign/chain` (PEM intermediates and
root) and `dev.sigstore.cosign/bundle`::

    {"SignedEntryTimestamp": "<base64 ECDSA signature by the Rekor key>",
     "Payload": {"body": "<base64 Rekor entry>", "integratedTime": <unix seconds>,
                 "logIndex": <int>, "logID": "<hex sha256 of the Rekor key's SPKI DER>"}}

The SET is the Rekor key's signature over the RFC 8785 canonical JSON of `Payload`. The entry body
(`hashedrekord`) names the signature, the certificate and the payload's SHA-256, binding the SET
to this very signature. Fulcio certificates live ten minutes: the chain is checked at the SET's
`integratedTime`, never at "now". The signer is the certificate's SAN (email or URI); the OIDC
issuer is in extension 1.3.6.1.4.1.57264.1.8 (a DER UTF8String) or, in older certificates,
1.3.6.1.4.1.57264.1.1 (the raw string).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import UnsupportedGeneralNameType
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from policies.signatures.findings import Finding, not_after, short
from policies.signatures.simple_signing import (
    CosignSignature,
    FormatError,
    go_b64decode,
    verify_with_key,
)
from policies.signatures.trust import PublicKey, TrustConfig, TrustedIdentity

ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")


class KeylessError(ValueError):
    """The certificate, its chain or the Rekor entry does not verify; the message says how."""


@dataclass(frozen=True, slots=True)
class SignedEntry:
    """A verified Rekor entry: when it was logged, where."""

    integrated_time: int
    log_index: int
    log_id: str

    @property
    def time(self) -> datetime.datetime:
        """`integrated_time` as an aware datetime."""
        return datetime.datetime.fromtimestamp(self.integrated_time, datetime.UTC)


@dataclass(frozen=True, slots=True)
class CertificateIdentity:
    """Who a signing certificate names: its SANs and the OIDC issuer Fulcio recorded."""

    subjects: tuple[str, ...]
    issuer: str | None
    subject_dn: str


def _der_utf8(value: bytes) -> str | None:
    # The extension holds one DER UTF8String (tag 0x0c); only its length framing is read here.
    if len(value) < 2 or value[0] != 0x0C:
        return None
    length, offset = value[1], 2
    if length & 0x80:
        count = length & 0x7F
        length, offset = int.from_bytes(value[2 : 2 + count], "big"), 2 + count
    text = value[offset : offset + length]
    return text.decode("utf-8", "replace") if len(text) == length else None


def certificate_identity(certificate: x509.Certificate) -> CertificateIdentity:
    """The SANs (email, URI, DNS) and the OIDC issuer of a certificate."""
    subjects: list[str] = []
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for kind in (x509.RFC822Name, x509.UniformResourceIdentifier, x509.DNSName):
            subjects.extend(san.get_values_for_type(kind))
    except x509.ExtensionNotFound:
        pass
    issuer = None
    for extension in certificate.extensions:
        value = extension.value
        if not isinstance(value, x509.UnrecognizedExtension):
            continue
        if extension.oid == ISSUER_V2:
            issuer = _der_utf8(value.value) or issuer
        elif extension.oid == ISSUER_V1 and issuer is None:
            issuer = value.value.decode("utf-8", "replace")
    return CertificateIdentity(tuple(subjects), issuer, certificate.subject.rfc4514_string())


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    at: datetime.datetime,
    *,
    private_pki: bool = False,
) -> list[x509.Certificate]:
    """Build and check the chain from `leaf` to one of `roots`, valid at `at`.

    Code-signing certificates carry the code-signing EKU (Fulcio) or none (private PKI), not the
    client-auth one the client verifier asks for by default: only the EKU rule is relaxed, every
    other web PKI extension rule holds.
    """
    ca_policy = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None
    )
    if private_pki:
        # Private CAs (cosign --certificate-chain) often omit KeyUsage; when present it must
        # still allow signing certificates.
        ca_policy = ca_policy.may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _signs_certs)
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None
    )
    # Roots are trust anchors only when they are self-signed; an intermediate named as a root
    # in a policy anchors the chain too (the store trusts exactly what it is given).
    verifier = (
        PolicyBuilder()
        .store(Store(list(roots)))
        .time(at)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        return list(verifier.verify(leaf, list(intermediates)).chain)
    # Once the chain verifies, the leaf's names are read: a name the library cannot take (an IP
    # address of 5 bytes: `ValueError`) or does not support (x400Address) refuses the leaf.
    except (VerificationError, ValueError, UnsupportedGeneralNameType) as exc:
        raise KeylessError(
            f"certificate chain does not verify at {at:%Y-%m-%dT%H:%M:%SZ}: {exc}"
        ) from None


def verify_signed_entry(
    bundle: bytes,
    rekor_keys: Mapping[str, PublicKey],
    signature: bytes,
    payload: bytes,
    certificate_pem: bytes | None,
    public_key: PublicKey | None = None,
) -> SignedEntry:
    """Check cosign's Rekor bundle annotation: the SET by a trusted Rekor key, and an entry body
    naming this signature, this payload and this certificate (or key)."""
    try:
        document = json.loads(bundle)
        set_signature = go_b64decode(document["SignedEntryTimestamp"])
        entry = document["Payload"]
        canonical = rfc8785.dumps(
            {
                "body": entry["body"],
                "integratedTime": entry["integratedTime"],
                "logID": entry["logID"],
                "logIndex": entry["logIndex"],
            }
        )
        body = json.loads(go_b64decode(entry["body"]))
        if not isinstance(body, dict):
            raise TypeError("the entry body is not a JSON object")
        integrated_time, log_index = entry["integratedTime"], entry["logIndex"]
        if not all(
            isinstance(n, int) and not isinstance(n, bool) for n in (integrated_time, log_index)
        ):
            raise TypeError("integratedTime and logIndex must be integers")
    except (ValueError, KeyError, TypeError):
        raise FormatError("the Rekor bundle annotation is not cosign's bundle JSON") from None
    key = rekor_keys.get(str(entry["logID"]))
    if key is None:
        raise KeylessError(f"Rekor log {str(entry['logID'])[:12]}… is not in the trusted root")
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(set_signature, canonical, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(set_signature, canonical)  # type: ignore[call-arg]
    except (InvalidSignature, TypeError):
        raise KeylessError("the Rekor signed entry timestamp does not verify") from None
    _check_entry_body(body, signature, payload, certificate_pem, public_key)
    return SignedEntry(integrated_time, log_index, str(entry["logID"]))


def _check_entry_body(
    body: Mapping[str, object],
    signature: bytes,
    payload: bytes,
    certificate_pem: bytes | None,
    public_key: PublicKey | None,
) -> None:
    if body.get("kind") != "hashedrekord":
        raise KeylessError(f"Rekor entry kind {body.get('kind')!r} is not hashedrekord")
    try:
        spec = body["spec"]
        logged_signature = go_b64decode(spec["signature"]["content"])  # type: ignore[index]
        logged_key = go_b64decode(spec["signature"]["publicKey"]["content"])  # type: ignore[index]
        logged_hash = spec["data"]["hash"]  # type: ignore[index]
        if not isinstance(logged_hash, dict):
            raise TypeError("the logged hash is not an object")
    except (KeyError, TypeError, ValueError):
        raise FormatError("the Rekor entry body is not a hashedrekord v0.0.1") from None
    if logged_signature != signature:
        raise KeylessError("the Rekor entry logs another signature")
    if (
        logged_hash.get("algorithm") != "sha256"
        or logged_hash.get("value") != hashlib.sha256(payload).hexdigest()
    ):
        raise KeylessError("the Rekor entry logs another payload")
    if certificate_pem is not None:
        try:
            logged = (
                x509.load_pem_x509_certificate(logged_key) if b"CERTIFICATE" in logged_key else None
            )
            ours = x509.load_pem_x509_certificate(certificate_pem)
        except ValueError:
            raise FormatError("the Rekor entry logs a certificate that is not PEM") from None
        if logged is None or logged != ours:
            raise KeylessError("the Rekor entry logs another certificate")
    elif public_key is not None:
        spki = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if logged_key.strip() != spki.strip():
            raise KeylessError("the Rekor entry logs another key")


def _signs_certs(
    policy: object, certificate: x509.Certificate, usage: x509.KeyUsage | None
) -> None:
    if usage is not None and not usage.key_cert_sign:
        raise ValueError("CA KeyUsage does not allow keyCertSign")


@dataclass(frozen=True, slots=True)
class KeylessResult:
    """A keyless signature whose certificate verified: who signed, and when it was logged."""

    identity: CertificateIdentity
    entry: SignedEntry | None
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()  # the verified chain, leaf first


def verify_certificate_signature(
    certificate_pem: bytes,
    chain_pem: bytes | None,
    roots: Sequence[x509.Certificate],
    rekor_keys: Mapping[str, PublicKey] | None,
    bundle: bytes | None,
    signature: bytes,
    payload: bytes,
    now: datetime.datetime | None = None,
) -> KeylessResult:
    """Verify a certificate-carrying signature of `payload`.

    With `rekor_keys` (Sigstore keyless) the Rekor bundle is required and the chain is checked at
    its integrated time; without (a private PKI) the chain is checked at `now`.
    """
    try:
        leaf = x509.load_pem_x509_certificate(certificate_pem)
        chain = list(x509.load_pem_x509_certificates(chain_pem)) if chain_pem else []
    except ValueError:
        raise FormatError("the certificate annotations are not PEM certificates") from None
    entry = None
    at = now or datetime.datetime.now(datetime.UTC)
    if rekor_keys is not None:
        if bundle is None:
            raise KeylessError("no Rekor bundle: a keyless signature must be logged")
        entry = verify_signed_entry(bundle, rekor_keys, signature, payload, certificate_pem)
        at = entry.time
    verified = verify_chain(leaf, chain, roots, at, private_pki=rekor_keys is None)
    key = leaf.public_key()
    if not verify_with_key(key, payload, signature):  # type: ignore[arg-type]
        raise KeylessError("the signature does not verify with the certificate's key")
    return KeylessResult(certificate_identity(leaf), entry, leaf, tuple(verified))


def verify_against(
    trust: TrustConfig, signature: CosignSignature, digest: str
) -> tuple[list[Finding], str]:
    """Which trusted identities (Fulcio) and certificate authorities (private PKI) a
    certificate-carrying simple signing layer proves; when none, why, for each configured signer
    in turn (`gha-release: certificate chain does not verify ...; corp-ca: ...`)."""
    found: list[Finding] = []
    reasons: list[str] = []
    assert signature.certificate is not None
    by_root: dict[str, list[TrustedIdentity]] = {}
    for identity in trust.identities.values():
        by_root.setdefault(identity.root.path, []).append(identity)
    for identities in by_root.values():
        root = identities[0].root
        names = ", ".join(i.name for i in identities)
        try:
            result = verify_certificate_signature(
                signature.certificate,
                signature.chain,
                root.fulcio,
                root.rekor,
                signature.bundle,
                signature.signature,
                signature.payload,
            )
        except (KeylessError, FormatError) as exc:
            reasons.append(f"{names}: {exc}")
            continue
        who = result.identity
        matched = [i for i in identities if i.matches(who.issuer, who.subjects)]
        for identity in matched:
            found.append(Finding(digest, "cosign-keyless", True, identity.name, _who(result)))
        if not matched:
            reasons.append(f"{names}: by an unknown identity ({_who(result)})")
    for authority in trust.certificates.values():
        try:
            result = verify_certificate_signature(
                signature.certificate,
                signature.chain,
                authority.roots,
                None,
                None,
                signature.signature,
                signature.payload,
            )
        except (KeylessError, FormatError) as exc:
            reasons.append(f"{authority.name}: {exc}")
            continue
        if authority.subject is None or same_dn(authority.subject, result.identity.subject_dn):
            # Checked at "now", not at a logged time: the proof ends with the chain's validity.
            until = not_after(result.chain)
            found.append(
                Finding(
                    digest, "cosign-keyless", True, authority.name, _who(result), valid_until=until
                )
            )
        else:
            reasons.append(
                f"{authority.name}: certificate subject {result.identity.subject_dn!r} is not "
                "trusted"
            )
    if not reasons:
        return found, f"by an unknown certificate ({short(digest)})"
    return found, "by no trusted signer (" + "; ".join(reasons) + ")"


def _who(result: KeylessResult) -> str:
    subject = ", ".join(result.identity.subjects) or result.identity.subject_dn
    issuer = f" from {result.identity.issuer}" if result.identity.issuer else ""
    return f"{subject}{issuer}"


def same_dn(wanted: str, actual: str) -> bool:
    """Whether two RFC 4514 names are the same, ignoring spacing and the order of RDNs."""

    def parts(name: str) -> set[str]:
        return {p.strip().replace(" ", "") for p in name.split(",") if p.strip()}

    return parts(wanted) == parts(actual)
