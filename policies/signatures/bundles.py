"""Sigstore bundles (v0.1 to v0.3) attached to an image as OCI referrers.

A bundle is JSON: `verificationMaterial` (a Fulcio certificate or chain, or only a public key
`hint`; Rekor `tlogEntries`; RFC 3161 timestamps) and one signed content, either

* `messageSignature`: a signature over a digest, here the image manifest's (`messageDigest`
  must name the image), or
* `dsseEnvelope`: a DSSE envelope whose payload is an in-toto statement; it counts for the image
  when one of the statement's `subject` digests is the image digest. cosign 3 signs images this
  way (predicate type `https://sigstore.dev/cosign/sign/v1`); attestations (SLSA provenance,
  SBOMs) too, and their predicate type is recorded so a rule can ask for one.

Certificate-based bundles are verified by the `sigstore` package, offline, against the trusted
root of each trusted identity (the chain at a verified time: the Rekor integrated time or an
RFC 3161 timestamp; the SCT, the Rekor entry and its consistency with the signature, the signature
itself), completed in `sigstore_verifier` for what real signers write and `sigstore` refuses
(`intoto` 0.0.2 entries, proto3 JSON without defaults, closed TSA validity); the identity (SAN
and OIDC issuer) is checked by a `sigstore` verification policy built from `identities:`. The
trusted root is read on each verification, so a replaced file counts at once.

Keyed bundles (`verificationMaterial.publicKey`, what cosign 3 writes when signing with a key) are
refused by `sigstore`; they are verified here with `cryptography`: the signature over the DSSE
PAE (or over the message digest) by a trusted key, the statement subject, and, only when the
key's trust entry names a `rekor:` root, a Rekor entry for this very signature proved by its
signed entry timestamp or by an inclusion proof up to a checkpoint signed by a trusted Rekor key
(entry kinds `dsse` 0.0.1, `intoto` 0.0.2, `hashedrekord` 0.0.1 and 0.0.2).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from policies.signatures.findings import Finding, invalid, short, unknown
from policies.signatures.keyless import certificate_identity
from policies.signatures.references import statement_reference
from policies.signatures.sigstore_verifier import proto3_defaults
from policies.signatures.simple_signing import verify_with_key
from policies.signatures.trust import (
    PublicKey,
    SigstoreRoot,
    TrustConfig,
    TrustedIdentity,
    TrustedKey,
)

IN_TOTO = "application/vnd.in-toto+json"
BUNDLE_MEDIA_TYPES = frozenset(
    {
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
    }
)

# `sigstore` logs every verification step at INFO/WARNING; a registry verifies on every push.
logging.getLogger("sigstore").setLevel(logging.ERROR)


class BundleError(ValueError):
    """The bundle is malformed or does not verify; the message says how."""


@dataclass(frozen=True, slots=True)
class Statement:
    """What an in-toto statement says: the subject digests (sha256 hex) and the predicate type."""

    subjects: tuple[str, ...]
    predicate_type: str | None

    @classmethod
    def parse(cls, payload: bytes) -> Statement:
        """Read an in-toto v0.1 or v1 statement; `BundleError` when it is not one."""
        try:
            document = json.loads(payload)
            subjects = tuple(
                str(subject["digest"]["sha256"])
                for subject in document["subject"]
                if isinstance(subject, dict) and "sha256" in subject.get("digest", {})
            )
        except (ValueError, KeyError, TypeError):
            raise BundleError("the DSSE payload is not an in-toto statement") from None
        predicate_type = document.get("predicateType")
        return cls(subjects, predicate_type if isinstance(predicate_type, str) else None)

    def names(self, image_digest: str) -> bool:
        """Whether a subject of the statement is the image."""
        algorithm, _, hex_part = image_digest.partition(":")
        return algorithm == "sha256" and hex_part in self.subjects


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature signs."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _b64(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"{what} is not base64") from None


def verify_layer(trust: TrustConfig, image_digest: str, content: bytes) -> list[Finding]:
    """What a Sigstore bundle layer proves about `image_digest` under `trust`: one finding per
    trusted signer it proves, or one invalid finding saying why it proves nothing."""
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    try:
        document = json.loads(content)
        material = document["verificationMaterial"]
        if document.get("mediaType") not in BUNDLE_MEDIA_TYPES:
            raise BundleError(f"unknown bundle media type {document.get('mediaType')!r}")
    except (ValueError, KeyError, TypeError) as exc:
        why = str(exc) if isinstance(exc, BundleError) else "not a Sigstore bundle"
        return [invalid(digest, "bundle", why)]
    if isinstance(material, dict) and "publicKey" in material:
        return _verify_keyed(trust, image_digest, document, digest)
    return _verify_certificate(trust, image_digest, content, digest)


# Certificate-based bundles: the `sigstore` package.


def _verifier(path: str) -> Any:
    """The `sigstore` verifier for the trusted root file at `path` as it is now: a replaced file
    is used at once (the file is read on every verification, which happens on push; parsing is
    done once per content). `BundleError` when the root is unreadable or malformed."""
    try:
        with open(path, "rb") as file:
            content = file.read()
    except OSError as exc:
        raise BundleError(f"the trusted root {path} cannot be read ({exc.strerror})") from None
    return _verifier_for(path, hashlib.sha256(content).hexdigest(), content)


@lru_cache(maxsize=32)
def _verifier_for(path: str, sha256: str, content: bytes) -> Any:
    """One verifier per trusted root content (the digest is the cache key's cheap part)."""
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import TrustedRoot
    from sigstore_models.trustroot.v1 import TrustedRoot as TrustedRootMessage

    from policies.signatures.sigstore_verifier import TrustyardVerifier, check_trusted_root

    del sha256
    try:
        problem = check_trusted_root(json.loads(content))
        if problem is not None:
            raise BundleError(f"the trusted root {path} is malformed: {problem}")
        root = TrustedRoot(TrustedRootMessage.from_json(content))
        return TrustyardVerifier(trusted_root=root)
    except BundleError:
        raise
    except (SigstoreError, ValueError) as exc:
        raise BundleError(f"the trusted root {path} cannot be used ({_first_line(exc)})") from None


class _TrustedIdentities:
    """A `sigstore` verification policy: the certificate names one of the trusted identities.
    On failure it says who the certificate does name."""

    def __init__(self, identities: Sequence[TrustedIdentity]) -> None:
        self.identities = identities

    def verify(self, cert: x509.Certificate) -> None:
        """Raise `sigstore`'s `VerificationError` unless an identity matches."""
        from sigstore.errors import VerificationError

        who = certificate_identity(cert)
        if not any(i.matches(who.issuer, who.subjects) for i in self.identities):
            raise VerificationError(f"by an unknown identity ({_who(cert)})")


def _who(cert: x509.Certificate) -> str:
    who = certificate_identity(cert)
    subject = ", ".join(who.subjects) or who.subject_dn
    return f"{subject} from {who.issuer}" if who.issuer else subject


def _verify_certificate(
    trust: TrustConfig, image_digest: str, content: bytes, digest: str
) -> list[Finding]:
    from sigstore.errors import Error as SigstoreError
    from sigstore.hashes import Hashed
    from sigstore.models import Bundle
    from sigstore_models.common.v1 import HashAlgorithm

    if not trust.identities:
        return [unknown(digest, "bundle", "certificate")]
    material = json.loads(content)["verificationMaterial"]
    if isinstance(material, dict) and not material.get("tlogEntries"):
        # A timestamp alone proves when, not that the signing was made public.
        return [invalid(digest, "bundle", "not logged in Rekor (no transparency log entry)")]
    try:
        bundle = Bundle.from_json(proto3_defaults(content))
    except (SigstoreError, ValueError) as exc:
        return [invalid(digest, "bundle", f"not a valid Sigstore bundle ({_first_line(exc)})")]
    by_root: dict[str, list[TrustedIdentity]] = {}
    for identity in trust.identities.values():
        by_root.setdefault(identity.root.path, []).append(identity)
    reasons: list[str] = []
    for path, identities in by_root.items():
        policy = _TrustedIdentities(identities)
        predicate_type = reference = None
        try:
            verifier = _verifier(path)
            if bundle._dsse_envelope is not None:
                payload_type, payload = verifier.verify_dsse(bundle, policy)
                predicate_type = _statement_for(image_digest, payload_type, payload)
                reference = statement_reference(payload, image_digest)
            else:
                algorithm, _, hex_part = image_digest.partition(":")
                if algorithm != "sha256":
                    raise BundleError(f"cannot check a {algorithm} image digest")
                hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(hex_part))
                verifier.verify_artifact(hashed, bundle, policy)
        except (SigstoreError, BundleError, ValueError) as exc:
            reasons.append(_reason(exc, bundle))
            continue
        cert = bundle.signing_certificate
        who = certificate_identity(cert)
        return [
            Finding(digest, "bundle", True, i.name, _who(cert), reference, predicate_type)
            for i in identities
            if i.matches(who.issuer, who.subjects)
        ]
    return [invalid(digest, "bundle", reasons[-1])]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _reason(exc: BaseException, bundle: Any) -> str:
    """How a failed `sigstore` verification reads in a denial."""
    text = _first_line(exc)
    if text.startswith(("by an unknown identity", "for another image", "a DSSE payload")):
        return text
    message = bundle._inner.message_signature
    if "digest mismatch" in text.lower() and message and message.message_digest:
        return f"for another image ({short('sha256:' + message.message_digest.digest.hex())})"
    return f"a Sigstore bundle that does not verify ({text})"


def _statement_for(image_digest: str, payload_type: str, payload: bytes) -> str | None:
    """The predicate type of a verified DSSE payload that names the image; raise otherwise."""
    if payload_type != IN_TOTO:
        raise BundleError(f"a DSSE payload of type {payload_type!r}, not an in-toto statement")
    statement = Statement.parse(payload)
    if not statement.names(image_digest):
        named = ", ".join(short("sha256:" + s) for s in statement.subjects) or "nothing"
        raise BundleError(f"for another image ({named})")
    return statement.predicate_type


# Keyed bundles: our own code on `cryptography`.


def _verify_keyed(
    trust: TrustConfig, image_digest: str, document: Mapping[str, Any], digest: str
) -> list[Finding]:
    kind = "bundle-keyed"
    keys = _by_hint(trust.keys.values(), document["verificationMaterial"]["publicKey"])
    try:
        if "dsseEnvelope" in document:
            envelope = document["dsseEnvelope"]
            payload_type = str(envelope["payloadType"])
            payload = _b64(envelope["payload"], "the DSSE payload")
            signatures = [_b64(s["sig"], "a DSSE signature") for s in envelope["signatures"]]
            signed = pae(payload_type, payload)
            proved = [(k, s) for k in keys for s in signatures if verify_with_key(k.key, signed, s)]
            if not proved:
                return [unknown(digest, kind)]
            predicate_type = _statement_for(image_digest, payload_type, payload)
            reference = statement_reference(payload, image_digest)
            logged = _LoggedDsse(payload, signed)
        elif "messageSignature" in document:
            message = document["messageSignature"]
            signature = _b64(message["signature"], "the message signature")
            signed_digest = _b64(message["messageDigest"]["digest"], "the message digest")
            if message["messageDigest"].get("algorithm") != "SHA2_256":
                raise BundleError("the message digest is not SHA2_256")
            proved = [
                (k, signature) for k in keys if _verify_digest(k.key, signed_digest, signature)
            ]
            if not proved:
                return [unknown(digest, kind)]
            if "sha256:" + signed_digest.hex() != image_digest:
                signed_for = short("sha256:" + signed_digest.hex())
                return [invalid(digest, kind, f"for another image ({signed_for})")]
            predicate_type = reference = None
            logged = _LoggedDsse(None, signed_digest)
        else:
            raise BundleError("the bundle holds neither a DSSE envelope nor a message signature")
        entries = document["verificationMaterial"].get("tlogEntries") or []
        found = []
        for key, signature in proved:
            if key.rekor is not None:
                verify_logged(entries, key.rekor, logged, signature)
            found.append(
                Finding(
                    digest, kind, True, key.name, f"by key {key.key_id}", reference, predicate_type
                )
            )
        return found
    except BundleError as exc:
        return [invalid(digest, kind, str(exc))]
    except (KeyError, TypeError, ValueError):
        return [invalid(digest, kind, "not a Sigstore bundle")]


def _by_hint(keys: Any, public_key: Mapping[str, Any]) -> list[TrustedKey]:
    """The trusted keys, the one the `hint` names first (the hint is advisory: every trusted key
    is tried, since signers put different things in it)."""
    hint = str(public_key.get("hint", "")) if isinstance(public_key, dict) else ""
    ordered = sorted(keys, key=lambda k: hint not in (k.key_id, k.key_id.split(":")[1], _b64id(k)))
    return list(ordered)


def _b64id(key: TrustedKey) -> str:
    return base64.b64encode(bytes.fromhex(key.key_id.split(":")[1])).decode()


def _verify_digest(key: PublicKey, digest: bytes, signature: bytes) -> bool:
    """A signature over a SHA-256 digest (a message signature signs the artifact, hashed)."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        elif isinstance(key, rsa.RSAPublicKey):
            try:
                key.verify(signature, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
            except InvalidSignature:
                pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
                key.verify(signature, digest, pss, Prehashed(hashes.SHA256()))
        else:  # Ed25519 signs messages, never digests
            return False
        return True
    except (InvalidSignature, ValueError):
        return False


# Rekor entries of keyed bundles, checked only when the policy asks.


@dataclass(frozen=True, slots=True)
class _LoggedDsse:
    """What a Rekor entry must name: the DSSE payload (None for a message signature) and the
    bytes whose hash Rekor v2 records (the PAE, or the message digest itself)."""

    payload: bytes | None
    signed: bytes


def verify_logged(
    entries: Sequence[Mapping[str, Any]],
    root: SigstoreRoot,
    logged: _LoggedDsse,
    signature: bytes,
) -> None:
    """A Rekor entry of `entries` logs this signature, proved by a signed entry timestamp or an
    inclusion proof under a key of `root`; `BundleError` saying why not otherwise."""
    if not entries:
        raise BundleError("not logged in Rekor (the bundle has no transparency log entry)")
    reasons = []
    for entry in entries:
        try:
            body = _b64(entry["canonicalizedBody"], "the Rekor entry body")
            _check_body(json.loads(body), logged, signature)
            if entry.get("inclusionPromise"):
                _verify_promise(entry, body, root)
            elif entry.get("inclusionProof"):
                _verify_inclusion(entry["inclusionProof"], body, root)
            else:
                raise BundleError("the Rekor entry carries neither a promise nor a proof")
            return
        except BundleError as exc:
            reasons.append(str(exc))
        except (KeyError, TypeError, ValueError):
            reasons.append("the Rekor entry is malformed")
    raise BundleError(reasons[-1])


def _check_body(body: Mapping[str, Any], logged: _LoggedDsse, signature: bytes) -> None:
    """The entry body names this signature over this content."""
    if not isinstance(body, dict):
        raise BundleError("the Rekor entry is malformed")
    kind, spec = body.get("kind"), body.get("spec") or {}
    encoded = base64.b64encode(signature).decode()
    if kind == "dsse" and logged.payload is not None:
        payload_hash = spec["payloadHash"]
        if payload_hash.get("value") != hashlib.sha256(logged.payload).hexdigest():
            raise BundleError("the Rekor entry logs another payload")
        if encoded not in [s.get("signature") for s in spec.get("signatures", [])]:
            raise BundleError("the Rekor entry logs another signature")
    elif kind == "intoto" and logged.payload is not None:
        # intoto 0.0.2 (cosign `attest`): the envelope's payload and signatures as base64 of
        # their base64 text, and the payload's hash.
        content = spec["content"]
        if content["payloadHash"].get("value") != hashlib.sha256(logged.payload).hexdigest():
            raise BundleError("the Rekor entry logs another payload")
        envelope = content["envelope"]
        if "payload" in envelope:
            text = _b64(envelope["payload"], "the logged payload").decode("ascii", "replace")
            if _b64(text, "the logged payload") != logged.payload:
                raise BundleError("the Rekor entry logs another payload")
        logged_signatures = [
            _b64(s.get("sig", ""), "a logged signature").decode() for s in envelope["signatures"]
        ]
        if encoded not in logged_signatures:
            raise BundleError("the Rekor entry logs another signature")
    elif kind == "hashedrekord" and "hashedRekordV002" in spec:
        v2 = spec["hashedRekordV002"]
        wanted = logged.signed if logged.payload is None else hashlib.sha256(logged.signed).digest()
        if _b64(v2["data"]["digest"], "the logged digest") != wanted:
            raise BundleError("the Rekor entry logs another payload")
        if v2["signature"]["content"] != encoded:
            raise BundleError("the Rekor entry logs another signature")
    elif kind == "hashedrekord" and logged.payload is None:
        if spec["data"]["hash"].get("value") != logged.signed.hex():
            raise BundleError("the Rekor entry logs another payload")
        if spec["signature"]["content"] != encoded:
            raise BundleError("the Rekor entry logs another signature")
    else:
        raise BundleError(f"Rekor entry kind {kind!r} does not log this bundle's content")


def _verify_with(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            return False
        return True
    except InvalidSignature:
        return False


def _verify_promise(entry: Mapping[str, Any], body: bytes, root: SigstoreRoot) -> None:
    """The signed entry timestamp: the Rekor key's signature over the canonical JSON of the
    entry's body, integrated time, log id (hex) and index."""
    log_id = _b64(entry["logId"]["keyId"], "the Rekor log id").hex()
    key = root.rekor.get(log_id)
    if key is None:
        raise BundleError(f"Rekor log {log_id[:12]}… is not in the trusted root")
    canonical = rfc8785.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "integratedTime": int(entry["integratedTime"]),
            "logID": log_id,
            "logIndex": int(entry["logIndex"]),
        }
    )
    promise = _b64(entry["inclusionPromise"]["signedEntryTimestamp"], "the SET")
    if not _verify_with(key, promise, canonical):
        raise BundleError("the Rekor signed entry timestamp does not verify")


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """The root an RFC 9162 inclusion proof leads to (section 2.1.3.2)."""
    if not 0 <= index < size:
        raise BundleError("the inclusion proof's index is outside the tree")
    fn, sn, node = index, size - 1, hashlib.sha256(b"\x00" + leaf).digest()
    for sibling in path:
        if sn == 0:
            raise BundleError("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            node = _node(sibling, node)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            node = _node(node, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise BundleError("the inclusion proof is too short")
    return node


def _verify_inclusion(proof: Mapping[str, Any], body: bytes, root: SigstoreRoot) -> None:
    """The entry is in the tree whose root a trusted Rekor key signed (the checkpoint)."""
    size, index = int(proof["treeSize"]), int(proof["logIndex"])
    path = [_b64(h, "an inclusion proof hash") for h in proof["hashes"]]
    tree_root = _b64(proof["rootHash"], "the inclusion proof root")
    if merkle_root(index, size, body, path) != tree_root:
        raise BundleError("the Rekor inclusion proof does not lead to its root")
    note, _, signatures = str(proof["checkpoint"]["envelope"]).partition("\n\n")
    lines = note.split("\n")
    checkpoint_root = _b64(lines[2], "the checkpoint root") if len(lines) >= 3 else b""
    if lines[1:2] != [str(size)] or checkpoint_root != tree_root:
        raise BundleError("the Rekor checkpoint is for another tree")
    signed = (note + "\n").encode()
    for line in signatures.splitlines():
        if not line.startswith("\u2014 "):
            continue
        raw = _b64(line.rsplit(" ", 1)[-1], "a checkpoint signature")
        if any(_verify_with(key, raw[4:], signed) for key in root.rekor.values()):
            return
    raise BundleError("the Rekor checkpoint is not signed by a trusted Rekor key")
