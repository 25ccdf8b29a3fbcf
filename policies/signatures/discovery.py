"""Where an image's signatures live in the registry, and which manifests are signatures.

* cosign simple signing: the tag `sha256-<hex>.sig` in the image's repository.
* OCI referrers (manifests whose `subject` is the image): Sigstore bundles (found by the layer
  media type, whatever the referrer's `artifactType` says), cosign simple signing layers attached
  as referrers, and Notation signatures (artifact type `application/vnd.cncf.notary.signature`,
  one JWS or COSE envelope layer).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from storage.blobstore import BlobStore
from storage.metadata import MetadataDB
from storage.oci.digests import parse_digest
from storage.oci.media_types import NOTATION_ENVELOPES, SIGSTORE_BUNDLE_TYPES, SIMPLE_SIGNING

NOTATION_ARTIFACT = "application/vnd.cncf.notary.signature"
SIGNATURE_LAYER_TYPES = SIGSTORE_BUNDLE_TYPES | NOTATION_ENVELOPES | {SIMPLE_SIGNING}
SIGNATURE_ARTIFACT_TYPES = SIGSTORE_BUNDLE_TYPES | {NOTATION_ARTIFACT, SIMPLE_SIGNING}

#: The largest signature blob read: payloads, bundles and envelopes are kilobytes (a Sigstore
#: bundle holding an in-toto provenance statement may reach a few hundred).
MAX_SIGNATURE_BLOB = 1024 * 1024

#: The largest cosign simple signing payload read: cosign's are a few hundred bytes.
MAX_SIMPLE_SIGNING_PAYLOAD = 64 * 1024

#: Signature manifests read per image, at most (a flood of referrers costs no more than this).
MAX_SIGNATURE_MANIFESTS = 64

#: Signature layers in one signature manifest, at most: cosign adds one layer per `cosign sign`
#: of the same image, so a real `.sig` holds a handful. A manifest with more proves nothing.
MAX_SIGNATURE_LAYERS = 32

#: Signature layers verified per image, over all its signature manifests: the cost of verifying
#: one image (on a push of its signature, or on a pull) is bounded by this many verifications.
MAX_VERIFICATIONS = 64

#: Signature bytes read per image, over all its signature layers.
MAX_SIGNATURE_BYTES = 8 * 1024 * 1024


def blob_limit(media_type: str) -> int:
    """The largest blob of a signature layer of this media type that is read."""
    return MAX_SIMPLE_SIGNING_PAYLOAD if media_type == SIMPLE_SIGNING else MAX_SIGNATURE_BLOB


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


def _signature_layers(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [x for x in _layers(manifest) if x.get("mediaType") in SIGNATURE_LAYER_TYPES]


def limits_problem(manifest: Mapping[str, Any]) -> str | None:
    """Why a signature manifest is too costly to verify (too many signature layers, a layer
    declared larger than its kind may be), or None when it is within the limits."""
    layers = _signature_layers(manifest)
    if len(layers) > MAX_SIGNATURE_LAYERS:
        return (
            f"holds {len(layers)} signature layers, more than the limit of {MAX_SIGNATURE_LAYERS}"
        )
    for index, layer in enumerate(layers):
        size, limit = layer.get("size"), blob_limit(str(layer.get("mediaType")))
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return f"has a signature layer without a valid size (layer {index})"
        if size > limit:
            return (
                f"has a {layer.get('mediaType')} layer of {size} bytes (layer {index}), more "
                f"than the limit of {limit}"
            )
    return None


def push_problem(content: bytes, tag: str | None) -> str | None:
    """Why a pushed signature manifest (`.sig` tag or signature referrer) must be refused before
    it is stored: it is over the verification limits. None for any other manifest (and for bytes
    that are not a JSON object: the manifest parser refuses those with its own reason)."""
    try:
        manifest = json.loads(content)
    except ValueError:
        return None
    if not isinstance(manifest, dict):
        return None
    if subject_of_sig_tag(tag) is None:
        subject = manifest.get("subject")
        if not isinstance(subject, dict) or not is_signature_manifest(manifest):
            return None
    problem = limits_problem(manifest)
    return None if problem is None else f"signature manifest {problem}"


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
    # Why the manifest was not verified (over a limit); it then proves nothing.
    problem: str | None = None


@dataclass
class _Budget:
    """What is left of one image's verification budget while its signatures are read."""

    verifications: int = MAX_VERIFICATIONS
    bytes: int = MAX_SIGNATURE_BYTES


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
    db: MetadataDB, store: BlobStore, repository: str, digest: str, via: str, budget: _Budget
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
    artifact_type = manifest.get("artifactType")
    shown = artifact_type if isinstance(artifact_type, str) else None

    def refused(problem: str) -> SignatureManifest:
        return SignatureManifest(digest, shown, via, (), f"signature manifest {problem}")

    problem = limits_problem(manifest)
    if problem is not None:
        return refused(problem + ": not verified")
    wanted = _signature_layers(manifest)
    if len(wanted) > budget.verifications:
        return refused(
            f"would exceed the limit of {MAX_VERIFICATIONS} signatures verified per image: "
            "not verified"
        )
    budget.verifications -= len(wanted)
    layers = []
    read: dict[str, bytes | None] = {}  # one payload named by many layers is read once
    for layer in wanted:
        media_type, layer_digest = str(layer.get("mediaType")), layer.get("digest")
        if not isinstance(layer_digest, str):
            continue
        if layer_digest not in read:
            if int(layer["size"]) > budget.bytes:  # sizes were checked by `limits_problem`
                return refused(
                    f"would exceed the limit of {MAX_SIGNATURE_BYTES} signature bytes read per "
                    "image: not verified"
                )
            read[layer_digest] = content = await read_blob(
                store, layer_digest, min(blob_limit(media_type), budget.bytes)
            )
            budget.bytes -= len(content or b"")
        content = read[layer_digest]
        if content is None:
            continue
        annotations = layer.get("annotations")
        layers.append(
            SignatureLayer(
                media_type,
                layer_digest,
                annotations if isinstance(annotations, dict) else {},
                content,
            )
        )
    return SignatureManifest(digest, shown, via, tuple(layers))


async def sources(db: MetadataDB, repository: str, image_digest: str) -> str:
    """A fingerprint of where the image's signatures live now: the manifest its `.sig` tag
    points at and its referrers. Proofs recorded under another fingerprint are stale (a
    signature was deleted, replaced or added) and are verified again before they count."""
    tagged = await db.tag_target(repository, sig_tag(image_digest))
    referrers = (await db.referrers(repository, image_digest))[:MAX_SIGNATURE_MANIFESTS]
    listed = [f"tag={tagged or ''}", *(f"ref={r.digest}" for r in referrers)]
    return "sha256:" + hashlib.sha256("\n".join(listed).encode()).hexdigest()


async def find_signatures(
    db: MetadataDB, store: BlobStore, repository: str, image_digest: str
) -> list[SignatureManifest]:
    """Every signature manifest of `image_digest` in `repository`: the `.sig` tag and the
    referrers that hold signatures."""
    found: list[SignatureManifest] = []
    budget = _Budget()
    tagged = await db.tag_target(repository, sig_tag(image_digest))
    if tagged is not None:
        manifest = await _read(db, store, repository, tagged, "tag", budget)
        if manifest is not None:
            found.append(manifest)
    for referrer in (await db.referrers(repository, image_digest))[:MAX_SIGNATURE_MANIFESTS]:
        if referrer.digest == tagged:
            continue
        manifest = await _read(db, store, repository, referrer.digest, "referrer", budget)
        if manifest is not None:
            found.append(manifest)
    return found
