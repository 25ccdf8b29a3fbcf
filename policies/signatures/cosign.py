"""What a cosign signature layer proves: its simple-signing payload verified with a trusted
key (and, when the key's trust entry names a `rekor:` root, the Rekor bundle that logs it) or
with a Fulcio certificate (`keyless`). The payload and layer formats are in `simple_signing`.

A key whose trust entry names a `rekor:` root proves a signature only with the Rekor bundle cosign
stores in the layer annotation `dev.sigstore.cosign/bundle` (see `keyless` for its shape): a signed
entry timestamp by a Rekor key of that root, over an entry that logs this signature, this payload
and this key. Without `rekor:`, the signature alone counts (`cosign verify --insecure-ignore-tlog`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping

from policies.signatures import keyless
from policies.signatures.findings import Finding, invalid, short, unknown
from policies.signatures.simple_signing import (
    BUNDLE_ANNOTATION,
    CosignSignature,
    FormatError,
    SimpleSigningPayload,
    verify_with_key,
)
from policies.signatures.trust import TrustConfig, TrustedKey


def verify_layer(
    trust: TrustConfig, image_digest: str, payload: bytes, annotations: Mapping[str, str]
) -> list[Finding]:
    """What one simple signing layer proves about `image_digest` under `trust`: one finding per
    trusted signer it proves, or one invalid finding saying why it proves nothing."""
    try:
        signature = CosignSignature.from_layer(payload, annotations)
    except FormatError as exc:
        return [invalid("sha256:" + hashlib.sha256(payload).hexdigest(), "cosign", str(exc))]
    digest = "sha256:" + hashlib.sha256(signature.signature).hexdigest()
    try:
        signed = SimpleSigningPayload.parse(payload)
    except FormatError as exc:
        return [invalid(digest, "cosign", f"not a cosign signature ({exc})")]
    found: list[Finding] = []
    if signature.certificate is None:
        kind = "cosign"
        unlogged: list[str] = []
        for trusted in trust.keys.values():
            if not verify_with_key(trusted.key, payload, signature.signature):
                continue
            if trusted.rekor is not None:
                why = _not_logged(trusted, signature)
                if why is not None:
                    unlogged.append(f"by {trusted.name}, but without a valid Rekor entry: {why}")
                    continue
            found.append(Finding(digest, kind, True, trusted.name, f"by key {trusted.key_id}"))
        if not found:
            return [invalid(digest, kind, unlogged[-1])] if unlogged else [unknown(digest, kind)]
    else:
        kind = "cosign-keyless"
        found, why = keyless.verify_against(trust, signature, digest)
        if not found:
            return [invalid(digest, kind, why)]
    if signed.manifest_digest != image_digest:
        who = ", ".join(f.signer or "" for f in found)
        return [
            invalid(
                digest, kind, f"by {who} but for another image ({short(signed.manifest_digest)})"
            )
        ]
    return [
        dataclasses.replace(f, kind=kind, valid=True, docker_reference=signed.docker_reference)
        for f in found
    ]


def _not_logged(trusted: TrustedKey, signature: CosignSignature) -> str | None:
    """Why the layer's Rekor bundle does not log this signature of its payload by `trusted`'s key
    under a Rekor key of the key's `rekor:` root; `None` when it does."""
    assert trusted.rekor is not None
    if signature.bundle is None:
        return f"the layer has no {BUNDLE_ANNOTATION} annotation"
    try:
        keyless.verify_signed_entry(
            signature.bundle,
            trusted.rekor.rekor,
            signature.signature,
            signature.payload,
            None,
            trusted.key,
        )
    except (keyless.KeylessError, FormatError) as exc:
        return str(exc)
    return None
