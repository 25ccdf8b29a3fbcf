"""The `sigstore` package's verifier, completed for bundles real signers write that it refuses.

`sigstore.verify.Verifier` does the work (certificate chain at the verified time, SCT, Rekor entry
and its promise or inclusion proof, RFC 3161 timestamps, the signature); this subclass adds:

* Rekor `intoto` 0.0.2 entries, what sigstore-js `attest`, npm provenance and older GitHub
  attestations log. `sigstore` verifies their inclusion but refuses their integrated time and
  their body; here the integrated time counts as it does for `dsse` 0.0.1 (it is signed by the
  entry's signed entry timestamp, checked with the entry), and the body must log this very
  envelope: its payload hash, payload type and every signature with the signing certificate.
* Timestamp authorities whose trusted-root validity ends exactly at the timestamp: a trusted
  root's `validFor` is a closed interval (the sigstore-conformance suite says so; `sigstore` reads
  the end as exclusive).
* Bundles in proto3 JSON with default values left out (a Rekor inclusion proof at log index 0
  has no `logIndex`, one in a tree of one leaf no `hashes`): sigstore-js writes them so, and
  `sigstore`'s models require the fields; `proto3_defaults` writes them back.
* A trusted root whose logs or authorities lack `validFor.start` is refused
  (`check_trusted_root`): a missing bound is not "forever".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError
from rfc3161_client import TimeStampResponse, VerifierBuilder
from rfc3161_client import VerificationError as Rfc3161VerificationError
from sigstore import dsse
from sigstore._internal.timestamp import TimestampSource, TimestampVerificationResult
from sigstore.errors import VerificationError
from sigstore.models import Bundle
from sigstore.verify import Verifier
from sigstore.verify.policy import VerificationPolicy

#: Rekor entry kinds whose integrated time the log's signed entry timestamp vouches for.
_INTEGRATED_TIME_KINDS = frozenset(
    {("dsse", "0.0.1"), ("hashedrekord", "0.0.1"), ("intoto", "0.0.2")}
)
_INTOTO = ("intoto", "0.0.2")


def proto3_defaults(content: bytes) -> bytes:
    """The bundle JSON with the proto3 defaults a writer may leave out written back in (no
    `tlogEntries`, an inclusion proof's `logIndex` 0 and empty `hashes`); other bytes are
    returned unchanged."""
    try:
        document = json.loads(content)
        material = document["verificationMaterial"]
        changed = "tlogEntries" not in material
        entries = material.setdefault("tlogEntries", [])
    except (ValueError, KeyError, TypeError, AttributeError):
        return content
    for entry in entries if isinstance(entries, list) else ():
        proof = entry.get("inclusionProof") if isinstance(entry, dict) else None
        if isinstance(proof, dict):
            for name, default in (("logIndex", "0"), ("hashes", [])):
                if name not in proof:
                    proof[name] = default
                    changed = True
    return json.dumps(document).encode() if changed else content


def check_trusted_root(document: Any) -> str | None:
    """What makes a trusted root unusable (None: nothing): every log key and authority must
    say from when it is trusted."""
    if not isinstance(document, dict):
        return "not a JSON object"
    for section in ("tlogs", "ctlogs"):
        for index, log in enumerate(document.get(section) or []):
            start = ((log.get("publicKey") or {}).get("validFor") or {}).get("start")
            if not start:
                return f"{section}[{index}].publicKey.validFor.start is missing"
    for section in ("certificateAuthorities", "timestampAuthorities"):
        for index, authority in enumerate(document.get(section) or []):
            if not (authority.get("validFor") or {}).get("start"):
                return f"{section}[{index}].validFor.start is missing"
    return None


class TrustyardVerifier(Verifier):
    """`sigstore`'s verifier with `intoto` 0.0.2 entries and closed TSA validity intervals."""

    def _establish_time(self, bundle: Bundle) -> list[TimestampVerificationResult]:
        entry = bundle.log_entry._inner
        kind = (entry.kind_version.kind, entry.kind_version.version)
        if kind != _INTOTO:
            return super()._establish_time(bundle)
        # As `sigstore` does for dsse 0.0.1: TSA timestamps, then the integrated time when a
        # signed entry timestamp binds it (verified with the entry later).
        times: list[TimestampVerificationResult] = []
        if bundle.verification_material.timestamp_verification_data:
            if not self._trusted_root.get_timestamp_authorities():
                raise VerificationError(
                    "the bundle has a signed timestamp but the trusted root no timestamp authority"
                )
            times.extend(self._verify_timestamp_authority(bundle))
        if entry.integrated_time and entry.inclusion_promise:
            times.append(
                TimestampVerificationResult(
                    source=TimestampSource.TRANSPARENCY_SERVICE,
                    time=datetime.fromtimestamp(entry.integrated_time, tz=UTC),
                )
            )
        return times

    def _verify_signed_timestamp(
        self, timestamp_response: TimeStampResponse, message: bytes
    ) -> TimestampVerificationResult | None:
        """A timestamp counts when one trusted authority's chain signed it over `message` and
        its time lies within that authority's validity, both ends included."""
        for authority in self._trusted_root.get_timestamp_authorities():
            certificates = authority.certificates(allow_expired=True)
            if len(certificates) < 2:  # a signing certificate and a root at least
                continue
            builder = (
                VerifierBuilder()
                .tsa_certificate(certificates[0])
                .add_root_certificate(certificates[-1])
            )
            for certificate in certificates[1:-1]:
                builder = builder.add_intermediate_certificate(certificate)
            try:
                builder.build().verify_message(timestamp_response, message)
            except Rfc3161VerificationError:
                continue
            when = timestamp_response.tst_info.gen_time
            end = authority.validity_period_end
            if authority.validity_period_start <= when and (end is None or when <= end):
                return TimestampVerificationResult(
                    source=TimestampSource.TIMESTAMP_AUTHORITY, time=when
                )
        return None

    def verify_dsse(self, bundle: Bundle, policy: VerificationPolicy) -> tuple[str, bytes]:
        """As `Verifier.verify_dsse`, and for `intoto` 0.0.2 entries too."""
        entry = bundle.log_entry._inner
        if (entry.kind_version.kind, entry.kind_version.version) != _INTOTO:
            return super().verify_dsse(bundle, policy)
        self._verify_common_signing_cert(bundle, policy)
        envelope = bundle._dsse_envelope
        if envelope is None:
            raise VerificationError("an intoto log entry but no DSSE envelope in the bundle")
        key = bundle.signing_certificate.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise VerificationError("the signing certificate's key is not an ECDSA key")
        dsse._verify(key, envelope)
        _check_intoto_body(bundle, envelope._inner)
        return envelope._inner.payload_type, envelope._inner.payload


def _check_intoto_body(bundle: Bundle, envelope: Any) -> None:
    """The `intoto` 0.0.2 entry logs this envelope: its payload (by hash and content), payload
    type, and exactly its signatures, each with the bundle's signing certificate.

    In this kind the envelope's payload and signatures are base64 of their base64 text, and each
    signature's `publicKey` is the base64 of the signer's PEM certificate.
    """
    import rekor_types

    try:
        body = rekor_types.Intoto.model_validate_json(bundle.log_entry._inner.canonicalized_body)
        content = body.spec.root.content
        logged = content.envelope
        if logged is None or content.payload_hash is None:
            raise VerificationError("the intoto log entry has no envelope or payload hash")
        payload_hash = content.payload_hash
        if payload_hash.algorithm.value != "sha256":
            raise VerificationError("the intoto log entry's payload hash is not sha256")
        if payload_hash.value != hashlib.sha256(envelope.payload).hexdigest():
            raise VerificationError("the log entry payload hash does not match the bundle")
        if logged.payload is not None and _b64(_b64(logged.payload)) != envelope.payload:
            raise VerificationError("the log entry payload does not match the bundle")
        if logged.payload_type != envelope.payload_type:
            raise VerificationError("the log entry payload type does not match the bundle")
        wanted = sorted(s.sig for s in envelope.signatures)
        decoded = [_twice_decoded(s.sig) for s in logged.signatures]
        found = sorted(d for d in decoded if d is not None) if None not in decoded else None
        certificates = [
            x509.load_pem_x509_certificate(_b64(str(s.public_key))) for s in logged.signatures
        ]
    except (ValidationError, ValueError, TypeError, AttributeError, binascii.Error) as exc:
        if isinstance(exc, VerificationError):
            raise
        raise VerificationError(f"invalid intoto log entry: {exc}") from None
    if found != wanted:
        raise VerificationError("the log entry signatures do not match the bundle")
    if any(c != bundle.signing_certificate for c in certificates):
        raise VerificationError("the log entry names another signing certificate")


def _b64(text: str | bytes) -> bytes:
    return base64.b64decode(text, validate=True)


def _twice_decoded(text: str) -> bytes | None:
    """A logged signature (base64 of base64 text), or None when it is not encoded so: then it
    is not the bundle's signature."""
    try:
        return _b64(_b64(text))
    except (binascii.Error, ValueError):
        return None
