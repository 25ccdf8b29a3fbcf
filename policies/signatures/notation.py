"""Notary Project (Notation) signatures: OCI referrers with artifact type
`application/vnd.cncf.notary.signature` holding one envelope, JWS (`application/jose+json`) or
COSE (`application/cose`), over the payload::

    {"targetArtifact": {"mediaType": "...", "digest": "sha256:<hex>", "size": <int>}}

Both envelopes carry the signing certificate chain (`x5c` / COSE label 33, leaf first) and
protected headers: the signing scheme (`notary.x509` or `notary.x509.signingAuthority`), the
signing time, an optional expiry, and `crit` naming the headers a verifier must understand.

A signature proves a `certificates:` trust entry when its chain leads to one of the entry's
certificates (a CA, or the signing certificate itself, as Notation's self-signed test certificates
are trusted), valid now, the signing time inside the signing certificate's validity, the
signature not expired, the subject equal to the entry's `subject` when one is set, and the signed
`targetArtifact` digest equal to the image. The JWS framing (JSON serialization, base64url) and
COSE_Sign1 structure (CBOR, via `cbor2`) are decoded here; every signature and certificate check
is `cryptography`'s.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from policies.signatures.findings import Finding, invalid, not_after, short
from policies.signatures.keyless import KeylessError, same_dn, verify_chain
from policies.signatures.trust import TrustConfig, TrustedCertificates

JWS = "application/jose+json"
COSE = "application/cose"
PAYLOAD_TYPE = "application/vnd.cncf.notary.payload.v1+json"
SIGNING_SCHEMES = frozenset({"notary.x509", "notary.x509.signingAuthority"})
#: The critical headers we understand; a signature naming another (a plugin) cannot be verified.
UNDERSTOOD = frozenset(
    {
        "io.cncf.notary.signingScheme",
        "io.cncf.notary.expiry",
        "io.cncf.notary.authenticSigningTime",
    }
)

#: Signature algorithms by JWS name and COSE label: (hash, RSA-PSS or ECDSA).
ALGORITHMS: Mapping[str | int, tuple[type[hashes.HashAlgorithm], str]] = {
    "PS256": (hashes.SHA256, "pss"),
    "PS384": (hashes.SHA384, "pss"),
    "PS512": (hashes.SHA512, "pss"),
    "ES256": (hashes.SHA256, "ecdsa"),
    "ES384": (hashes.SHA384, "ecdsa"),
    "ES512": (hashes.SHA512, "ecdsa"),
    -37: (hashes.SHA256, "pss"),
    -38: (hashes.SHA384, "pss"),
    -39: (hashes.SHA512, "pss"),
    -7: (hashes.SHA256, "ecdsa"),
    -35: (hashes.SHA384, "ecdsa"),
    -36: (hashes.SHA512, "ecdsa"),
}


class NotationError(ValueError):
    """The envelope is malformed or does not verify; the message says how."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded envelope: what was signed, with what, by which chain, and the headers."""

    signed: bytes  # the exact bytes the signature covers
    signature: bytes
    algorithm: str | int
    chain: tuple[x509.Certificate, ...]
    payload: bytes
    content_type: str | None
    scheme: str | None
    critical: tuple[str, ...]
    signing_time: datetime.datetime | None
    expiry: datetime.datetime | None


def _b64url(text: Any) -> bytes:
    try:
        value = str(text)
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise NotationError("the JWS is not base64url") from None


def _time(value: Any) -> datetime.datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        moment = value
    elif isinstance(value, int | float):
        moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
    else:
        try:
            moment = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise NotationError(f"not a time: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _certificates(ders: Sequence[bytes]) -> tuple[x509.Certificate, ...]:
    try:
        chain = tuple(x509.load_der_x509_certificate(der) for der in ders)
    except (ValueError, TypeError):
        raise NotationError("the certificate chain is not DER certificates") from None
    if not chain:
        raise NotationError("the envelope carries no certificate chain")
    return chain


def decode_jws(content: bytes) -> Envelope:
    """A Notation JWS (JSON serialization, flattened)."""
    try:
        document = json.loads(content)
        protected_b64, payload_b64 = str(document["protected"]), str(document["payload"])
        header = json.loads(_b64url(protected_b64))
        unprotected = document.get("header") or {}
        chain = _certificates([base64.b64decode(c) for c in unprotected["x5c"]])
        signature = _b64url(document["signature"])
    except NotationError:
        raise
    except (ValueError, KeyError, TypeError):
        raise NotationError("not a Notation JWS envelope") from None
    return Envelope(
        f"{protected_b64}.{payload_b64}".encode(),
        signature,
        str(header.get("alg")),
        chain,
        _b64url(payload_b64),
        header.get("cty"),
        header.get("io.cncf.notary.signingScheme"),
        tuple(header.get("crit") or ()),
        _time(
            header.get("io.cncf.notary.signingTime")
            or header.get("io.cncf.notary.authenticSigningTime")
        ),
        _time(header.get("io.cncf.notary.expiry")),
    )


def decode_cose(content: bytes) -> Envelope:
    """A Notation COSE_Sign1 (CBOR tag 18)."""
    try:
        message = cbor2.loads(content)
        if isinstance(message, cbor2.CBORTag):
            if message.tag != 18:
                raise NotationError(f"CBOR tag {message.tag} is not COSE_Sign1")
            message = message.value
        protected_bytes, unprotected, payload, signature = message
        header = cbor2.loads(protected_bytes) if protected_bytes else {}
        ders = unprotected.get(33)
        chain = _certificates([ders] if isinstance(ders, bytes) else list(ders or ()))
        # The signature covers the Sig_structure, with the protected header as sent.
        signed = cbor2.dumps(["Signature1", protected_bytes, b"", payload])
    except NotationError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, AttributeError):
        raise NotationError("not a Notation COSE envelope") from None
    return Envelope(
        signed,
        bytes(signature),
        header.get(1),
        chain,
        bytes(payload),
        header.get(3),
        header.get("io.cncf.notary.signingScheme"),
        tuple(header.get(2) or ()),
        _time(
            header.get("io.cncf.notary.signingTime")
            or header.get("io.cncf.notary.authenticSigningTime")
        ),
        _time(header.get("io.cncf.notary.expiry")),
    )


def verify_envelope_signature(envelope: Envelope) -> None:
    """The signing certificate's key signed the envelope, with the algorithm it names."""
    algorithm = ALGORITHMS.get(envelope.algorithm)
    if algorithm is None:
        raise NotationError(f"unsupported signature algorithm {envelope.algorithm!r}")
    hash_type, scheme = algorithm
    key = envelope.chain[0].public_key()
    try:
        if scheme == "pss" and isinstance(key, rsa.RSAPublicKey):
            pss = padding.PSS(mgf=padding.MGF1(hash_type()), salt_length=hash_type.digest_size)
            key.verify(envelope.signature, envelope.signed, pss, hash_type())
        elif scheme == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            half = len(envelope.signature) // 2
            r, s = envelope.signature[:half], envelope.signature[half:]
            der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
            key.verify(der, envelope.signed, ec.ECDSA(hash_type()))
        else:
            raise NotationError(f"{envelope.algorithm} does not fit the certificate's key")
    except InvalidSignature:
        raise NotationError("the envelope signature does not verify") from None


def check_envelope(envelope: Envelope, image_digest: str, now: datetime.datetime) -> None:
    """Headers, times and the signed target: everything but who signed."""
    if envelope.content_type != PAYLOAD_TYPE:
        raise NotationError(f"payload content type {envelope.content_type!r} is not Notation's")
    if envelope.scheme not in SIGNING_SCHEMES:
        raise NotationError(f"unknown signing scheme {envelope.scheme!r}")
    unknown = [c for c in envelope.critical if c not in UNDERSTOOD]
    if unknown:
        raise NotationError(f"needs headers this verifier does not implement ({unknown[0]})")
    leaf = envelope.chain[0]
    if envelope.signing_time is None:
        raise NotationError("the envelope has no signing time")
    if not leaf.not_valid_before_utc <= envelope.signing_time <= leaf.not_valid_after_utc:
        raise NotationError(
            f"signed at {envelope.signing_time:%Y-%m-%dT%H:%M:%SZ}, outside the certificate's "
            "validity"
        )
    # The Notary Project signature specification: "expired when the current time is greater
    # than or equal to expiry time" (as notation-go's `!now.Before(expiry)`).
    if envelope.expiry is not None and now >= envelope.expiry:
        raise NotationError(f"the signature expired at {envelope.expiry:%Y-%m-%dT%H:%M:%SZ}")
    try:
        target = json.loads(envelope.payload)["targetArtifact"]
        signed_digest = str(target["digest"])
    except (ValueError, KeyError, TypeError):
        raise NotationError("the payload has no targetArtifact descriptor") from None
    if signed_digest != image_digest:
        raise NotationError(f"for another image ({short(signed_digest)})")


def chain_is_trusted(
    chain: Sequence[x509.Certificate], authority: TrustedCertificates, now: datetime.datetime
) -> None:
    """The chain leads to one of the entry's certificates, valid now; `NotationError` if not."""
    leaf = chain[0]
    if leaf in authority.roots:
        # The signing certificate is trusted as is (a self-signed signer in the trust store).
        # Whole seconds, as the chain verifier reads X.509 times: the `notAfter` second counts
        # to its end (`not_after`), so the proof and this check end at the same instant.
        if not leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc + _SECOND:
            raise NotationError("the signing certificate is not valid now")
        return
    try:
        verify_chain(leaf, list(chain[1:]), authority.roots, now, private_pki=True)
    except KeylessError as exc:
        raise NotationError(str(exc)) from None


def verify_layer(
    trust: TrustConfig,
    image_digest: str,
    media_type: str,
    content: bytes,
    now: datetime.datetime | None = None,
) -> list[Finding]:
    """What a Notation envelope proves about `image_digest`: one finding per `certificates:`
    entry it proves, or one invalid finding saying why it proves nothing."""
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        envelope = decode_jws(content) if media_type == JWS else decode_cose(content)
        verify_envelope_signature(envelope)
        check_envelope(envelope, image_digest, now)
    except NotationError as exc:
        return [invalid(digest, "notation", str(exc))]
    leaf = envelope.chain[0]
    subject = leaf.subject.rfc4514_string()
    found: list[Finding] = []
    reason = f"by an unknown certificate ({subject})"
    for authority in trust.certificates.values():
        try:
            chain_is_trusted(envelope.chain, authority, now)
        except NotationError as exc:
            reason = f"by an untrusted certificate ({subject}): {exc}"
            continue
        if authority.subject is not None and not same_dn(authority.subject, subject):
            reason = f"by {subject}, not the subject {authority.name} requires"
            continue
        # The chain is checked at "now": the proof ends when a certificate or the signature
        # expires, whichever comes first.
        ends = [t for t in (not_after(envelope.chain), _expiry(envelope)) if t is not None]
        until = min(ends) if ends else None
        found.append(
            Finding(digest, "notation", True, authority.name, f"by {subject}", valid_until=until)
        )
    return found or [invalid(digest, "notation", reason)]


_SECOND = datetime.timedelta(seconds=1)


def _expiry(envelope: Envelope) -> float | None:
    return None if envelope.expiry is None else envelope.expiry.timestamp()
