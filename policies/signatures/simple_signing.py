"""cosign "simple signing": the payload cosign signs and its verification with a public key.

A cosign signature of `sha256:<hex>` lives in the same repository under the tag
`sha256-<hex>.sig`: an image manifest whose layers each hold one signed payload (media type
`application/vnd.dev.cosign.simplesigning.v1+json`) with the base64 signature in the layer
annotation `dev.cosignproject.cosign/signature`. The payload is JSON::

    {"critical": {"identity": {"docker-reference": "<registry>/<repository>"},
                  "image": {"docker-manifest-digest": "sha256:<hex>"},
                  "type": "cosign container image signature"},
     "optional": {...} | null}

cosign signs the exact payload bytes; so do we verify them, and read the JSON only to learn which
image they name.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from policies.signatures.trust import PublicKey
from storage.oci.media_types import SIMPLE_SIGNING as SIMPLE_SIGNING  # cosign's payload type

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"
SIGNATURE_TYPE = "cosign container image signature"

#: The largest payload read: cosign's are a few hundred bytes.
MAX_PAYLOAD = 64 * 1024


class FormatError(ValueError):
    """The bytes are not what the format says they must be."""


def go_b64decode(text: str | bytes) -> bytes:
    """Standard base64 read as Go's `base64.StdEncoding` reads it (cosign, Rekor): carriage
    returns and line feeds anywhere are ignored, anything else outside the alphabet and wrong
    padding are errors (`binascii.Error`)."""
    if isinstance(text, str):
        text = text.encode("ascii", "strict") if text.isascii() else b"\x00"
    return base64.b64decode(text.replace(b"\r", b"").replace(b"\n", b""), validate=True)


@dataclass(frozen=True, slots=True)
class SimpleSigningPayload:
    """What a simple signing payload says: the signed image and the reference it was signed as."""

    manifest_digest: str
    docker_reference: str
    optional: Mapping[str, Any] | None

    @classmethod
    def parse(cls, payload: bytes) -> SimpleSigningPayload:
        """Read a payload; `FormatError` if it is not cosign's simple signing JSON."""
        try:
            document = json.loads(payload)
            critical = document["critical"]
            digest = critical["image"]["docker-manifest-digest"]
            reference = critical["identity"]["docker-reference"]
            kind = critical["type"]
        except (ValueError, KeyError, TypeError):
            raise FormatError("not a cosign simple signing payload") from None
        if kind != SIGNATURE_TYPE:
            raise FormatError(f"payload type is {kind!r}, not {SIGNATURE_TYPE!r}")
        if not isinstance(digest, str) or not isinstance(reference, str):
            raise FormatError("payload digest and reference must be strings")
        optional = document.get("optional")
        return cls(digest, reference, optional if isinstance(optional, dict) else None)


@dataclass(frozen=True, slots=True)
class CosignSignature:
    """One layer of a `.sig` manifest: the payload bytes and the annotations cosign set."""

    payload: bytes
    signature: bytes
    certificate: bytes | None = None  # PEM leaf (keyless)
    chain: bytes | None = None  # PEM intermediates and root (keyless)
    bundle: bytes | None = None  # Rekor bundle JSON (keyless, and keys with `rekor:`)

    @classmethod
    def from_layer(cls, payload: bytes, annotations: Mapping[str, str]) -> CosignSignature:
        """The signature a layer's annotations carry for its payload blob."""
        encoded = annotations.get(SIGNATURE_ANNOTATION)
        if not encoded:
            raise FormatError(f"layer has no {SIGNATURE_ANNOTATION} annotation")
        try:
            signature = go_b64decode(encoded)
        except (binascii.Error, ValueError):
            raise FormatError(f"{SIGNATURE_ANNOTATION} is not base64") from None

        def optional(key: str) -> bytes | None:
            value = annotations.get(key)
            return value.encode() if value else None

        return cls(
            payload,
            signature,
            optional(CERTIFICATE_ANNOTATION),
            optional(CHAIN_ANNOTATION),
            optional(BUNDLE_ANNOTATION),
        )


def _ecdsa_hashes(key: ec.EllipticCurvePublicKey) -> tuple[hashes.HashAlgorithm, ...]:
    # cosign hashes with SHA-256 whatever the curve unless told otherwise; newer signers pick the
    # curve's own hash (P-384: SHA-384, P-521: SHA-512). Both are the same key, so both count.
    own: hashes.HashAlgorithm = {384: hashes.SHA384(), 521: hashes.SHA512()}.get(
        key.curve.key_size, hashes.SHA256()
    )
    return (hashes.SHA256(),) if isinstance(own, hashes.SHA256) else (hashes.SHA256(), own)


def verify_with_key(key: PublicKey, data: bytes, signature: bytes) -> bool:
    """Whether `signature` is `key`'s signature of `data` as cosign makes them.

    ECDSA: ASN.1 DER over SHA-256 (or the curve's hash). RSA: PKCS#1 v1.5, or PSS with any salt
    length, over SHA-256. Ed25519: pure Ed25519 over the data. (Ed25519ph, which cosign 2.4+
    uses for Ed25519 keys, is not offered by `cryptography` and is reported as a failure.)
    """
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            for algorithm in _ecdsa_hashes(key):
                try:
                    key.verify(signature, data, ec.ECDSA(algorithm))
                    return True
                except InvalidSignature:
                    continue
            return False
        if isinstance(key, rsa.RSAPublicKey):
            try:
                key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
                return True
            except InvalidSignature:
                pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
                key.verify(signature, data, pss, hashes.SHA256())
                return True
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
            return True
    except (InvalidSignature, ValueError):
        return False
    return False
