"""What the stores say about an image for lineage: its platform images and their layers.

An image manifest is one platform image; an index is one per child (attestation children such
as buildx's `unknown/unknown` ones are skipped). Layer digests come from the manifest, diff_ids
and the platform from the config blob. Both are immutable, so what was read is remembered by
digest: a push reads only its own new config, never the library's again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from policies.library.lineage import ImageLayers
from storage.blobstore import BlobStore
from storage.metadata import MetadataDB
from storage.oci.digests import parse_digest
from storage.oci.manifest import platform_string

#: Largest config blob read; image configs are small, a huge one is not parsed.
MAX_CONFIG_SIZE = 8 * 1024 * 1024
#: Children of an index looked at, at most.
MAX_CHILDREN = 128

INDEX_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
CONFIG_TYPES = frozenset(
    {
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
    }
)

_Config = tuple[tuple[str, ...] | None, str | None]
_CONFIGS: dict[str, _Config] = {}
_IMAGES: dict[tuple[str, str], tuple[ImageLayers, ...]] = {}
_CACHE_MAX = 10_000


def parse_json(content: bytes) -> dict[str, Any]:
    """A manifest or config as a mapping (empty when it is not a JSON object)."""
    try:
        document = json.loads(content)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def config_facts(config: Mapping[str, Any]) -> _Config:
    """(diff_ids, platform) of a parsed image config."""
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, Mapping) else None
    clean = tuple(d for d in diff_ids if isinstance(d, str)) if isinstance(diff_ids, list) else None
    return clean, platform_string(config)


async def read_config(descriptor: Mapping[str, Any], store: BlobStore) -> _Config:
    """(diff_ids, platform) of the config a manifest's descriptor names; (None, None) if
    unreadable."""
    key = str(descriptor.get("digest"))
    known = _CONFIGS.get(key)
    if known is not None:
        return known
    size = descriptor.get("size")
    if not isinstance(size, int) or size > MAX_CONFIG_SIZE:
        return None, None
    try:
        body = bytearray()
        async for chunk in store.read(parse_digest(key)):
            body += chunk
            if len(body) > MAX_CONFIG_SIZE:
                return None, None
    except Exception:  # a missing config is "diff_ids unknown", never a failed push
        return None, None
    found = config_facts(parse_json(bytes(body)))
    if len(_CONFIGS) >= _CACHE_MAX:
        _CONFIGS.clear()
    _CONFIGS[key] = found
    return found


async def image_layers(
    digest: str, manifest: Mapping[str, Any], platform: str | None, store: BlobStore
) -> ImageLayers | None:
    """One image manifest as lineage sees it; None when it is not a container image."""
    config = manifest.get("config")
    if not isinstance(config, Mapping) or config.get("mediaType") not in CONFIG_TYPES:
        return None
    layers = manifest.get("layers")
    digests = tuple(
        str(layer["digest"])
        for layer in (layers if isinstance(layers, list) else [])
        if isinstance(layer, Mapping) and isinstance(layer.get("digest"), str)
    )
    diff_ids, config_platform = await read_config(config, store)
    return ImageLayers(digest, platform or config_platform, digests, diff_ids)


async def platform_images(
    db: MetadataDB, store: BlobStore, repository: str, digest: str, content: bytes
) -> tuple[ImageLayers, ...]:
    """Every platform image of the manifest `content` (stored, or being pushed, in
    `repository`): itself, or an index's children."""
    key = (repository, digest)
    known = _IMAGES.get(key)
    if known is not None:
        return known
    manifest = parse_json(content)
    images: list[ImageLayers] = []
    complete = True  # an index whose children are not all stored yet is not remembered
    children = manifest.get("manifests")
    if isinstance(children, list) and ("config" not in manifest):
        for child in children[:MAX_CHILDREN]:
            if not isinstance(child, Mapping) or not isinstance(child.get("digest"), str):
                continue
            platform = platform_string(child.get("platform"))
            if platform is not None and platform.startswith("unknown/"):
                continue  # buildx attestations
            record = await db.get_manifest(repository, child["digest"])
            if record is None:
                complete = False
                continue
            image = await image_layers(record.digest, parse_json(record.content), platform, store)
            if image is not None:
                images.append(image)
    else:
        image = await image_layers(digest, manifest, None, store)
        if image is not None:
            images.append(image)
    found = tuple(images)
    if complete:
        if len(_IMAGES) >= _CACHE_MAX:
            _IMAGES.clear()
        _IMAGES[key] = found
    return found
