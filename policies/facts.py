"""What rules look at: the request (`PolicyRequest`) and the image (`ImageFacts`).

Facts are gathered once per uncached decision, before any rule runs, so that every rule's
`evaluate` is plain synchronous code over data already in memory. Rules declare the costly facts
they need (`CONFIG`: the image config blob(s); `CHILDREN`: an index's child manifests;
`TAG_TARGETS`: where a pushed tag points now) and only those are read from the stores.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from policies.decisions import Action
from policies.library.declaration import Library
from policies.library.lineage import Lineage
from policies.library.recording import trace_lineage
from policies.signatures.proofs import FACT_PREFIX as SIGNATURES
from policies.signatures.proofs import SignatureEvidence, gather_signatures
from storage.blobstore import BlobStore
from storage.metadata import LibraryHistory, MetadataDB
from storage.metadata.scan_store import gather_scans
from storage.metadata.scans import StoredReport
from storage.oci.digests import parse_digest
from storage.oci.image_kind import PAYLOAD_HEAD, Classification, Kind, classify, inert_payload
from storage.oci.manifest import platform_string
from storage.oci.media_types import INDEXES
from storage.oci.unambiguous_json import IMAGE_CONFIG, AmbiguousJSON, loads
from storage.oci.unambiguous_json import MANIFEST as MANIFEST_SHAPE

#: Not a read: the manifest itself, decoded. Every rule needs it; when it cannot be decoded the
#: way every client reads it, every matching rule denies.
MANIFEST = "manifest"
#: Facts that cost a read from the stores.
CONFIG = "config"
CHILDREN = "children"
#: What each pushed tag points at now (immutable tags).
TAG_TARGETS = "tag_targets"
#: What each platform image is built on (the base-image library, `policies.library`).
LINEAGE = "lineage"
#: Vulnerability scan reports on the image (`registry.scans`, the `vulnerabilities` rule).
SCANS = "scans"

#: Largest config blob read for labels; configs are small, a huge one is not parsed (and the
#: rules that need it deny).
MAX_CONFIG_SIZE = 8 * 1024 * 1024

#: Index children judged, at most. An index with more is not judged by the rules that look at
#: children (they deny): reading without bound would let one push cost without bound.
MAX_CHILDREN = 128

#: cosign's tags for signatures, attestations and SBOMs of `sha256:<hex>`.
COSIGN_TAG = re.compile(r"sha256-[0-9a-f]{64}\.(sig|att|sbom)")


def is_cosign_tag(tag: str) -> bool:
    """Whether `tag` is spelled like cosign's `sha256-<hex>.sig|.att|.sbom`. The spelling alone
    exempts nothing: tag rules let such a tag move only when it holds a signature (by
    structure, `storage.oci.image_kind`)."""
    return COSIGN_TAG.fullmatch(tag) is not None


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """Who asks to do what to which manifest.

    `tags` are the tags the request concerns: the pushed or deleted tag; for a pull, and for a
    delete by digest, every tag pointing at the digest (so a rule about `v*` tags cannot be
    side-stepped by asking for the digest).
    """

    action: Action
    repository: str
    reference: str
    digest: str
    tags: tuple[str, ...] = ()
    identity: str = "anonymous"


@dataclass(frozen=True, slots=True)
class Image:
    """One platform image: an image manifest, or one child of an index."""

    digest: str
    platform: str | None = None  # os/arch[/variant], when known
    layer_size: int = 0  # sum of the layers' sizes
    labels: Mapping[str, str] | None = None  # None when the config was not (or could not be) read
    # An index child's platform as its own config says (clients select by the index's, then run
    # this one): when both are known and differ, `platforms` denies.
    config_platform: str | None = None


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What is known of the manifest a request concerns."""

    digest: str
    media_type: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    is_index: bool = False
    # Exempt from image rules: a signature by structure, or an artifact type the policy exempts.
    is_artifact: bool = False
    kind: Kind = Kind.IMAGE  # what clients do with it (`storage.oci.image_kind`)
    kind_reason: str = ""
    images: tuple[Image, ...] = ()  # the image itself, or the index's children
    platforms: tuple[str, ...] = ()  # an index's platforms (from its descriptors)
    # tag -> digest it points at now; pushes only, when gathered
    tag_targets: Mapping[str, str] = field(default_factory=dict)
    # Whether `tag_targets` was read (a tag absent from it then points nowhere).
    tags_read: bool = False
    lineage: tuple[Lineage, ...] | None = None  # per platform image; None when not gathered
    # Signature proofs by trust config version (`signatures:<version>` needs; pulls only).
    signatures: Mapping[str, SignatureEvidence] | None = None
    scans: tuple[StoredReport, ...] | None = None  # scan reports; None when not gathered
    # What the engine could not learn, by fact (MANIFEST, CONFIG, CHILDREN): why. A rule that
    # needs a fact named here denies with the reason: what is unknown never allows.
    unknown: Mapping[str, str] = field(default_factory=dict)


async def _layer_size(manifest: Mapping[str, Any], needs: frozenset[str], db: MetadataDB) -> int:
    """The sum of the image's layer sizes. When the rules judge it (`CHILDREN`), each layer
    counts as the larger of the size its descriptor declares and the size of the blob the
    registry holds under its digest: a layer declared smaller than it is is served whole (docker
    reads it to its end and checks only the digest), so the declaration alone cannot pass
    `max_size`."""
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        return 0
    declared = [
        (layer.get("digest"), layer["size"] if isinstance(layer.get("size"), int) else 0)
        for layer in layers
        if isinstance(layer, dict)
    ]
    if CHILDREN not in needs:
        return sum(size for _, size in declared)
    stored = await db.blob_sizes([d for d, _ in declared if isinstance(d, str)])
    return sum(
        max(size, stored.get(digest, 0) if isinstance(digest, str) else 0)
        for digest, size in declared
    )


#: Manifests larger than this are decoded in a worker thread: a 4 MiB manifest takes a few
#: hundred milliseconds to check, which other clients must not wait for.
DECODE_OFF_LOOP = 256 * 1024


async def _decoded_off_loop(content: bytes) -> tuple[dict[str, Any], str | None]:
    if len(content) > DECODE_OFF_LOOP:
        return await asyncio.to_thread(_decoded, content)
    return _decoded(content)


def _decoded(content: bytes) -> tuple[dict[str, Any], str | None]:
    """The manifest, decoded the way every client reads it, or ({}, why not)."""
    try:
        manifest = loads(content, MANIFEST_SHAPE, what="manifest")
    except AmbiguousJSON as exc:
        return {}, str(exc)
    if not isinstance(manifest, dict):
        return {}, "the manifest is not a JSON object"
    return manifest, None


async def gather_facts(
    request: PolicyRequest,
    media_type: str,
    content: bytes,
    needs: frozenset[str],
    db: MetadataDB,
    store: BlobStore,
    library: Library | None = None,
    exempt_types: frozenset[str] = frozenset(),
    assumed_targets: Mapping[str, str | None] | None = None,
    history: LibraryHistory | None = None,
    decoded: dict[str, Any] | None = None,
) -> ImageFacts:
    """Learn what the rules in `needs` look at about the manifest `content` (lineage against
    the policy's `library`; `exempt_types`: the artifact types the policy exempts). A push may
    give where its tags point (`assumed_targets`) and the library `history` to trace against
    instead of reading them: its store then checks they still hold (`TagPremise`,
    `library_generation`); and `decoded`, the object its parse decoded from `content` by the
    same strict reading (`storage.oci.manifest.decode_manifest`), instead of decoding it again."""
    if decoded is not None:
        manifest, problem = decoded, None
    else:
        manifest, problem = await _decoded_off_loop(content)
    unknown: dict[str, str] = {}
    if problem is not None:
        unknown[MANIFEST] = problem
    classification = await _verified(classify(manifest), manifest, store)
    exempt = problem is None and (
        classification.kind is Kind.SIGNATURE
        or (
            classification.kind is Kind.ARTIFACT
            and classification.artifact_type is not None
            and classification.artifact_type in exempt_types
        )
    )
    annotations = manifest.get("annotations")
    is_index = media_type in INDEXES or classification.kind is Kind.INDEX
    tag_targets: dict[str, str] = {}
    if request.action is Action.PUSH and TAG_TARGETS in needs:
        for tag in request.tags:
            if assumed_targets is not None and tag in assumed_targets:
                target = assumed_targets[tag]
            else:
                target = await db.tag_target(request.repository, tag)
            if target is not None:
                tag_targets[tag] = target
    images: list[Image] = []
    platforms: list[str] = []
    if is_index:
        raw = manifest.get("manifests")
        children = [c for c in raw if isinstance(c, dict)] if isinstance(raw, list) else []
        # Descriptors cost nothing to read: every platform is listed, however many children.
        descriptor_platforms = [platform_string(c.get("platform")) for c in children]
        platforms = [p for p in descriptor_platforms if p is not None]
        if CHILDREN in needs and not exempt:
            if len(children) > MAX_CHILDREN:
                unknown[CHILDREN] = (
                    f"the index has {len(children)} child manifests; at most {MAX_CHILDREN} "
                    "are judged"
                )
            else:
                for child, platform in zip(children, descriptor_platforms, strict=True):
                    judged = await _child_image(
                        request.repository, child, platform, needs, db, store
                    )
                    if judged.image is not None:
                        images.append(judged.image)
                    for fact, why in judged.unknown.items():
                        unknown.setdefault(fact, why)
    elif problem is None:
        labels, config_platform = None, None
        if CONFIG in needs and not exempt:
            labels, config_platform, why = await _read_config(manifest, store)
            if why is not None:
                unknown[CONFIG] = why
        size = await _layer_size(manifest, needs, db)
        images.append(Image(request.digest, config_platform, size, labels))
    lineage = None
    if LINEAGE in needs:
        lineage = await trace_lineage(
            db, store, request.repository, request.digest, content, library, history
        )
    signatures = None
    if (
        request.action is Action.PULL
        and any(n.startswith(SIGNATURES) for n in needs)
        and not exempt
        and problem is None
    ):
        signatures = await gather_signatures(
            needs, request.repository, request.digest, manifest, db, store
        )
    scans = await gather_scans(db, request.digest) if SCANS in needs else None
    return ImageFacts(
        digest=request.digest,
        media_type=media_type,
        annotations=annotations if isinstance(annotations, dict) else {},
        is_index=is_index,
        is_artifact=exempt,
        kind=classification.kind,
        kind_reason=classification.reason,
        images=tuple(images),
        platforms=tuple(platforms),
        tag_targets=tag_targets,
        tags_read=request.action is Action.PUSH and TAG_TARGETS in needs,
        lineage=lineage,
        signatures=signatures,
        scans=scans,
        unknown=unknown,
    )


async def _child_image(
    repository: str,
    descriptor: Mapping[str, Any],
    platform: str | None,
    needs: frozenset[str],
    db: MetadataDB,
    store: BlobStore,
) -> ChildImage:
    """One child of an index, with what could not be learned of it."""
    digest = descriptor.get("digest")
    if not isinstance(digest, str):
        return ChildImage(Image("?", platform), {CHILDREN: "an index child has no digest"})
    where = f"child {platform or digest[:19]}"
    record = await db.get_manifest(repository, digest)
    if record is None:
        return ChildImage(Image(digest, platform), {CHILDREN: f"{where} is not in this repository"})
    manifest, problem = await _decoded_off_loop(record.content)
    if problem is not None:
        return ChildImage(Image(digest, platform), {CHILDREN: f"{where}: {problem}"})
    kind = (await _verified(classify(manifest), manifest, store)).kind
    if kind is Kind.SIGNATURE:
        # An attestation or signature listed in the index (buildx adds them): never run.
        return ChildImage(None, {})
    if kind is Kind.INDEX:
        # containerd follows nested indexes; judging them would make one push read without bound.
        return ChildImage(
            Image(digest, platform),
            {CHILDREN: f"{where} is itself an index; nested indexes are not judged"},
        )
    labels = None
    unknown: dict[str, str] = {}
    size = await _layer_size(manifest, needs, db)
    if CONFIG in needs:
        labels, config_platform, why = await _read_config(manifest, store)
        if why is not None:
            unknown[CONFIG] = f"{where}: {why}"
        return ChildImage(
            Image(digest, platform or config_platform, size, labels, config_platform), unknown
        )
    return ChildImage(Image(digest, platform, size, labels), unknown)


#: Signature layers whose bytes are checked, at most: a manifest with more is judged as an image.
MAX_SIGNATURE_LAYERS = 256


async def _verified(
    classification: Classification, manifest: Mapping[str, Any], store: BlobStore
) -> Classification:
    """A signature by media types stays one only when each payload's stored bytes are inert
    (`storage.oci.image_kind.inert_payload`): podman unpacks a tar whatever its layer type says."""
    if classification.kind is not Kind.SIGNATURE:
        return classification
    raw = manifest.get("layers")
    layers = [x for x in raw if isinstance(x, dict)] if isinstance(raw, list) else []
    if len(layers) > MAX_SIGNATURE_LAYERS:
        return Classification(
            Kind.IMAGE,
            classification.artifact_type,
            f"judged as an image: {len(layers)} signature layers, more than the "
            f"{MAX_SIGNATURE_LAYERS} whose bytes are checked",
        )
    for position, layer in enumerate(layers):
        why = await _payload_problem(layer, store)
        if why is not None:
            return Classification(
                Kind.IMAGE,
                classification.artifact_type,
                f"an image: layer {position} is typed as a signature but {why}",
            )
    return classification


async def _payload_problem(layer: Mapping[str, Any], store: BlobStore) -> str | None:
    head = b""
    try:
        digest = parse_digest(str(layer.get("digest")))
        async for chunk in store.read(digest, 0, PAYLOAD_HEAD):
            head += chunk
    except Exception as exc:  # unreadable: it cannot be shown inert
        return f"its bytes could not be read ({_unreadable(exc)})"
    return inert_payload(str(layer.get("mediaType")), head[:PAYLOAD_HEAD])


@dataclass(frozen=True, slots=True)
class ChildImage:
    """An index child as judged, and what could not be learned of it (fact -> why)."""

    image: Image | None  # None: a signature or attestation, not judged as an image
    unknown: Mapping[str, str]


#: What config blobs say, by digest: blobs are immutable, so this never goes stale.
_CONFIGS: dict[str, tuple[Mapping[str, str], str | None]] = {}
_CONFIGS_MAX = 10_000


async def _read_config(
    manifest: Mapping[str, Any], store: BlobStore
) -> tuple[Mapping[str, str] | None, str | None, str | None]:
    """The labels and platform in an image's config blob, or why they could not be read.

    The config is read whatever its media type: containerd decodes any config as an image
    config, and docker accepts several loose types (`storage.oci.image_kind`).
    """
    config = manifest.get("config")
    if not isinstance(config, dict):
        return None, None, "the manifest has no config"
    size = config.get("size")
    if not isinstance(size, int) or size > MAX_CONFIG_SIZE:
        # Before the cache: a config judged once under its digest says nothing about a manifest
        # declaring it larger than can be judged.
        return None, None, f"the image config is larger than {MAX_CONFIG_SIZE} bytes"
    key = str(config.get("digest"))
    known = _CONFIGS.get(key)
    if known is not None:
        return known[0], known[1], None
    labels, platform, why = await _parse_config(config, store)
    if labels is not None:
        if len(_CONFIGS) >= _CONFIGS_MAX:
            _CONFIGS.clear()
        _CONFIGS[key] = (labels, platform)
    return labels, platform, why


async def _parse_config(
    config: Mapping[str, Any], store: BlobStore
) -> tuple[Mapping[str, str] | None, str | None, str | None]:
    """Read and decode a config whose declared size the caller checked."""
    try:
        digest = parse_digest(str(config.get("digest")))
    except Exception:
        return None, None, "the config digest is not valid"
    body = bytearray()
    try:
        async for chunk in store.read(digest):
            body += chunk
            if len(body) > MAX_CONFIG_SIZE:
                return None, None, f"the image config is larger than {MAX_CONFIG_SIZE} bytes"
    except Exception as exc:  # a missing or unreadable blob: the rules that need it deny
        why = _unreadable(exc)
        return None, None, f"the image config {short_digest(str(digest))} could not be read ({why})"
    try:
        if len(body) > DECODE_OFF_LOOP:
            document = await asyncio.to_thread(
                loads, bytes(body), IMAGE_CONFIG, what="image config"
            )
        else:
            document = loads(bytes(body), IMAGE_CONFIG, what="image config")
    except AmbiguousJSON as exc:
        return None, None, str(exc)
    if not isinstance(document, dict):
        return None, None, "the image config is not a JSON object"
    inner = document.get("config")
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    if labels is not None and (
        not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values())
    ):
        return None, None, "the image config's Labels are not an object of strings"
    return dict(labels or {}), platform_string(document), None


def _unreadable(exc: Exception) -> str:
    """Why a blob could not be read, as a client may see it: an OSError's text names the file,
    and where the registry keeps its data is not the client's business."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def short_digest(digest: str) -> str:
    """`sha256:ab12cd34ef56…`."""
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}:{hex_part[:12]}…" if len(hex_part) > 12 else digest
