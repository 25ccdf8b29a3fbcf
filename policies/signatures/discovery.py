"""Where an image's signatures live in the registry, and which manifests are signatures.

* cosign simple signing: the tag `sha256-<hex>.sig` in the image's repository.
* OCI referrers (manifests whose `subject` is the image): Sigstore bundles (found by the layer
  media type, whatever the referrer's `artifactType` says), cosign simple signing layers attached
  as referrers, and Notation signatures (artifact type `application/vnd.cncf.notary.signature`,
  one JWS or COSE envelope layer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from policies.signatures.cosign import SIMPLE_SIGNING
from registry.grammar import parse_digest
from storage.blobstore import BlobStore
from storage.metadata import MetadataDB

SIGSTORE_BUNDLE_TYPES = frozenset(
    {
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.1",
    }
)
NOTATION_ARTIFACT = "application/vnd.cncf.notary.signature"
NOTATION_ENVELOPES = frozenset({"application/jose+json", "application/cose"})
SIGNATURE_LAYER_TYPES = SIGSTORE_BUNDLE_TYPES | NOTATION_ENVELOPES | {SIMPLE_SIGNING}
SIGNATURE_ARTIFACT_TYPES = SIGSTORE_BUNDLE_TYPES | {NOTATION_ARTIFACT, SIMPLE_SIGNING}

#: The largest signature blob read: payloads, bundles and envelopes are kilobytes.
MAX_SIGNATURE_BLOB = 1024 * 1024

#: Signature manifests read per image, at most (a flood of referrers costs no more than this).
MAX_SIGNATURE_MANIFESTS = 64


def sig_tag(digest: str) -> str:
    """cosign's signature tag for an image digest: `sha256-<hex>.sig`."""
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}-{hex_part}.sig"


def subject_of_sig_tag(tag: str | None) -> str | None:
    """The image digest a `sha256-<hex>.sig` tag signs, or None for any other tag."""
    if tag is None or not tag.endswith(".sig"):
        return None
    algorithm, sep, hex_part = tag[: -len(".sig")].partition("-")
    if not sep or algorithm != "sha256" or len(hex_part) != 64:
        return None
    return f"{algorithm}:{hex_part}"


def _layers(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    layers = manifest.get("layers")
    return [x for x in layers if isinstance(x, dict)] if isinstance(layers, list) else []


def is_signature_manifest(manifest: Mapping[str, Any]) -> bool:
    """Whether a manifest holds signatures: by artifact type, or by a layer's media type."""
    if manifest.get("artifactType") in SIGNATURE_ARTIFACT_TYPES:
        return True
    return any(layer.get("mediaType") in SIGNATURE_LAYER_TYPES for layer in _layers(manifest))


def signed_subject(content: bytes, tag: str | None) -> str | None:
    """The image a pushed manifest signs: from the `.sig` tag, or the `subject` of a signature
    referrer; None when the manifest is not a signature."""
    from_tag = subject_of_sig_tag(tag)
    if from_tag is not None:
        return from_tag
    try:
        manifest = json.loads(content)
    except ValueError:
        return None
    if not isinstance(manifest, dict):
        return None
    subject = manifest.get("subject")
    if not isinstance(subject, dict) or not isinstance(subject.get("digest"), str):
        return None
    return subject["digest"] if is_signature_manifest(manifest) else None


@dataclass(frozen=True, slots=True)
class SignatureLayer:
    """One signature-holding layer: its descriptor and its bytes."""

    media_type: str
    digest: str
    annotations: Mapping[str, str]
    content: bytes


@dataclass(frozen=True, slots=True)
class SignatureManifest:
    """A manifest that holds signatures of an image, with its signature layers read."""

    digest: str
    artifact_type: str | None
    via: str  # "tag" | "referrer"
    layers: tuple[SignatureLayer, ...] = field(default_factory=tuple)


async def read_blob(store: BlobStore, digest: str, limit: int = MAX_SIGNATURE_BLOB) -> bytes | None:
    """A small blob's bytes, or None when missing, unreadable or larger than `limit`."""
    try:
        body = bytearray()
        async for chunk in store.read(parse_digest(digest)):
            body += chunk
            if len(body) > limit:
                return None
        return bytes(body)
    except Exception:  # a missing blob is "no signature", never a crash
        return None


async def _read(
    db: MetadataDB, store: BlobStore, repository: str, digest: str, via: str
) -> SignatureManifest | None:
    record = await db.get_manifest(repository, digest)
    if record is None:
        return None
    try:
        manifest = json.loads(record.content)
    except ValueError:
        return None
    if not isinstance(manifest, dict) or not is_signature_manifest(manifest):
        return None
    layers = []
    for layer in _layers(manifest):
        media_type, layer_digest = layer.get("mediaType"), layer.get("digest")
        if media_type not in SIGNATURE_LAYER_TYPES or not isinstance(layer_digest, str):
            continue
        content = await read_blob(store, layer_digest)
        if content is None:
            continue
        annotations = layer.get("annotations")
        layers.append(
            SignatureLayer(
                str(media_type),
                layer_digest,
                annotations if isinstance(annotations, dict) else {},
                content,
            )
        )
    artifact_type = manifest.get("artifactType")
    return SignatureManifest(
        digest, artifact_type if isinstance(artifact_type, str) else None, via, tuple(layers)
    )


async def find_signatures(
    db: MetadataDB, store: BlobStore, repository: str, image_digest: str
) -> list[SignatureManifest]:
    """Every signature manifest of `image_digest` in `repository`: the `.sig` tag and the
    referrers that hold signatures."""
    found: list[SignatureManifest] = []
    tagged = await db.tag_target(repository, sig_tag(image_digest))
    if tagged is not None:
        manifest = await _read(db, store, repository, tagged, "tag")
        if manifest is not None:
            found.append(manifest)
    for referrer in (await db.referrers(repository, image_digest))[:MAX_SIGNATURE_MANIFESTS]:
        if referrer.digest == tagged:
            continue
        manifest = await _read(db, store, repository, referrer.digest, "referrer")
        if manifest is not None:
            found.append(manifest)
    return found
