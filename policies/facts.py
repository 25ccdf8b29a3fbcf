"""What rules look at: the request (`PolicyRequest`) and the image (`ImageFacts`).

Facts are gathered once per uncached decision, before any rule runs, so that every rule's
`evaluate` is plain synchronous code over data already in memory. Rules declare the costly facts
they need (`CONFIG`: the image config blob(s); `CHILDREN`: an index's child manifests;
`TAG_TARGETS`: where a pushed tag points now) and only those are read from the stores.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policies.decisions import Action
from policies.library.declaration import Library
from policies.library.lineage import Lineage
from policies.library.recording import trace_lineage
from policies.signatures.proofs import FACT_PREFIX as SIGNATURES
from policies.signatures.proofs import SignatureEvidence, gather_signatures
from registry.grammar import parse_digest
from registry.manifest_format import platform_string
from registry.scans.store import StoredReport, gather_scans
from storage.blobstore import BlobStore
from storage.metadata import MetadataDB

#: Facts that cost a read from the stores.
CONFIG = "config"
CHILDREN = "children"
#: What each pushed tag points at now (immutable tags).
TAG_TARGETS = "tag_targets"
#: What each platform image is built on (the base-image library, `policies.library`).
LINEAGE = "lineage"
#: Vulnerability scan reports on the image (`registry.scans`, the `vulnerabilities` rule).
SCANS = "scans"

#: Largest config blob read for labels; configs are small, a huge one is not parsed.
MAX_CONFIG_SIZE = 8 * 1024 * 1024

#: Index children read for size and labels checks, at most.
MAX_CHILDREN = 128

#: cosign's tags for signatures, attestations and SBOMs of `sha256:<hex>`.
COSIGN_TAG = re.compile(r"sha256-[0-9a-f]{64}\.(sig|att|sbom)")

_INDEXES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
_IMAGE_CONFIGS = frozenset(
    {
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
    }
)


def is_cosign_tag(tag: str) -> bool:
    """Whether `tag` is cosign's `sha256-<hex>.sig|.att|.sbom` (exempt from tag rules)."""
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


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What is known of the manifest a request concerns."""

    digest: str
    media_type: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    is_index: bool = False
    is_artifact: bool = False  # a signature, attestation or other non-image artifact
    images: tuple[Image, ...] = ()  # the image itself, or the index's children
    platforms: tuple[str, ...] = ()  # an index's platforms (from its descriptors)
    # tag -> digest it points at now; pushes only, when gathered
    tag_targets: Mapping[str, str] = field(default_factory=dict)
    lineage: tuple[Lineage, ...] | None = None  # per platform image; None when not gathered
    # Signature proofs by trust config version (`signatures:<version>` needs; pulls only).
    signatures: Mapping[str, SignatureEvidence] | None = None
    scans: tuple[StoredReport, ...] | None = None  # scan reports; None when not gathered


def _layer_size(manifest: Mapping[str, Any]) -> int:
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        return 0
    return sum(
        layer["size"]
        for layer in layers
        if isinstance(layer, dict) and isinstance(layer.get("size"), int)
    )


def _is_artifact(manifest: Mapping[str, Any], tags: Iterable[str]) -> bool:
    if manifest.get("subject") is not None or any(is_cosign_tag(t) for t in tags):
        return True
    if "manifests" in manifest:
        return "artifactType" in manifest
    config = manifest.get("config")
    config_type = config.get("mediaType") if isinstance(config, dict) else None
    return config_type not in _IMAGE_CONFIGS


async def gather_facts(
    request: PolicyRequest,
    media_type: str,
    content: bytes,
    needs: frozenset[str],
    db: MetadataDB,
    store: BlobStore,
    library: Library | None = None,
) -> ImageFacts:
    """Learn what the rules in `needs` look at about the manifest `content` (lineage against
    the policy's `library`)."""
    try:
        manifest = json.loads(content)
    except ValueError:
        manifest = {}
    if not isinstance(manifest, dict):
        manifest = {}
    annotations = manifest.get("annotations")
    is_index = media_type in _INDEXES or "manifests" in manifest
    tag_targets: dict[str, str] = {}
    if request.action is Action.PUSH and TAG_TARGETS in needs:
        for tag in request.tags:
            target = await db.tag_target(request.repository, tag)
            if target is not None:
                tag_targets[tag] = target
    images: list[Image] = []
    platforms: list[str] = []
    if is_index:
        children = manifest.get("manifests")
        for child in children[:MAX_CHILDREN] if isinstance(children, list) else []:
            if not isinstance(child, dict) or not isinstance(child.get("digest"), str):
                continue
            platform = platform_string(child.get("platform"))
            if platform is not None:
                platforms.append(platform)
            if CHILDREN in needs:
                images.append(
                    await _child_image(request.repository, child, platform, needs, db, store)
                )
    else:
        labels, config_platform = None, None
        if CONFIG in needs:
            labels, config_platform = await _read_config(manifest, store)
        images.append(Image(request.digest, config_platform, _layer_size(manifest), labels))
    lineage = None
    if LINEAGE in needs:
        lineage = await trace_lineage(
            db, store, request.repository, request.digest, content, library
        )
    is_artifact = _is_artifact(manifest, request.tags)
    signatures = None
    if (
        request.action is Action.PULL
        and any(n.startswith(SIGNATURES) for n in needs)
        and not is_artifact
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
        is_artifact=is_artifact,
        images=tuple(images),
        platforms=tuple(platforms),
        tag_targets=tag_targets,
        lineage=lineage,
        signatures=signatures,
        scans=scans,
    )


async def _child_image(
    repository: str,
    descriptor: Mapping[str, Any],
    platform: str | None,
    needs: frozenset[str],
    db: MetadataDB,
    store: BlobStore,
) -> Image:
    record = await db.get_manifest(repository, descriptor["digest"])
    if record is None:
        return Image(descriptor["digest"], platform)
    try:
        manifest = json.loads(record.content)
    except ValueError:
        return Image(record.digest, platform)
    labels = None
    if CONFIG in needs and isinstance(manifest, dict):
        labels, config_platform = await _read_config(manifest, store)
        platform = platform or config_platform
    size = _layer_size(manifest) if isinstance(manifest, dict) else 0
    return Image(record.digest, platform, size, labels)


#: What config blobs say, by digest: blobs are immutable, so this never goes stale.
_CONFIGS: dict[str, tuple[Mapping[str, str] | None, str | None]] = {}
_CONFIGS_MAX = 10_000


async def _read_config(
    manifest: Mapping[str, Any], store: BlobStore
) -> tuple[Mapping[str, str] | None, str | None]:
    """The labels and platform in an image's config blob (None, None if unreadable)."""
    config = manifest.get("config")
    if not isinstance(config, dict) or config.get("mediaType") not in _IMAGE_CONFIGS:
        return None, None
    key = str(config.get("digest"))
    known = _CONFIGS.get(key)
    if known is not None:
        return known
    found = await _parse_config(config, store)
    if found[0] is not None:
        if len(_CONFIGS) >= _CONFIGS_MAX:
            _CONFIGS.clear()
        _CONFIGS[key] = found
    return found


async def _parse_config(
    config: Mapping[str, Any], store: BlobStore
) -> tuple[Mapping[str, str] | None, str | None]:
    size = config.get("size")
    if not isinstance(size, int) or size > MAX_CONFIG_SIZE:
        return None, None
    try:
        digest = parse_digest(str(config.get("digest")))
        body = bytearray()
        async for chunk in store.read(digest):
            body += chunk
            if len(body) > MAX_CONFIG_SIZE:
                return None, None
        document = json.loads(bytes(body))
    except Exception:  # a missing or malformed config is "no labels", never a crash
        return None, None
    if not isinstance(document, dict):
        return None, None
    inner = document.get("config")
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    clean = (
        {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(labels, dict)
        else {}
    )
    return clean, platform_string(document)
