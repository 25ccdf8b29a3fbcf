"""The parsed manifest, and the checks a pushed manifest must pass before it is stored.

Covers the OCI image manifest and index and the Docker schema 2 manifest and manifest list
(OCI Image Spec v1.1, Docker Image Manifest V2 Schema 2; their media types are in `media_types`).
The bytes are never rewritten: parsing only learns what the manifest references, its subject and
its artifact type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from storage.oci.digests import parse_digest
from storage.oci.errors import MANIFEST_INVALID, OciError
from storage.oci.media_types import (
    DOCKER_SCHEMA1,
    IMAGE_MANIFESTS,
    INDEXES,
    MANIFEST_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from storage.oci.unambiguous_json import MANIFEST, AmbiguousJSON, loads


@dataclass(frozen=True, slots=True)
class Reference:
    """Something a manifest points at: a blob (config, layer) or a child manifest.

    Every reference protects its target from garbage collection. A `required` one must be in
    the repository when the manifest is pushed; a foreign layer (one with `urls`) need not be,
    but when it was pushed it is kept like any other layer.
    """

    digest: str
    kind: str  # 'blob' | 'manifest'
    required: bool = True


#: Content-Type values that say nothing about the manifest: the body's mediaType decides.
_GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "application/octet-stream"})

#: Largest manifest accepted (the reference registry's limit).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class ParsedManifest:
    """What the registry needs to know of a manifest it stores."""

    media_type: str
    references: list[Reference]
    subject: str | None
    artifact_type: str | None
    annotations: dict[str, str] | None
    #: The JSON object as decoded (the one strict reading, `decode_manifest`): what reads the
    #: manifest after the parse (the policy's facts) reads this instead of decoding it again.
    #: Read only.
    document: dict[str, Any] = field(repr=False, compare=False)


def parse_manifest(content: bytes, content_type: str | None) -> ParsedManifest:
    """Check a pushed manifest and learn its references; MANIFEST_INVALID says what is wrong,
    also when two clients could read the bytes differently (`storage.oci.unambiguous_json`)."""
    document = decode_manifest(content)
    media_type = _media_type(document, (content_type or "").split(";")[0].strip().lower())
    _unambiguous_kind(document, media_type)
    version = document.get("schemaVersion")
    if not isinstance(version, int) or isinstance(version, bool) or version != 2:
        raise _invalid("schemaVersion must be the integer 2")
    subject = _optional_descriptor(document, "subject")
    annotations = _annotations(document.get("annotations"), "annotations")
    artifact_type = document.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")
    references: list[Reference] = []
    if media_type in IMAGE_MANIFESTS:
        config = _descriptor(document.get("config"), "config")
        references.append(Reference(config["digest"], "blob"))
        layers = document.get("layers")
        if not isinstance(layers, list):
            raise _invalid("layers must be an array of descriptors")
        for position, layer in enumerate(layers):
            descriptor = _descriptor(layer, f"layers[{position}]")
            # A foreign (non-distributable) layer may be fetched from its `urls` and need not be
            # pushed; when it was, clients fetch it from us, so it is kept like any layer.
            required = not descriptor.get("urls")
            references.append(Reference(descriptor["digest"], "blob", required=required))
        if artifact_type is None and media_type == OCI_MANIFEST:
            artifact_type = config["mediaType"]
    else:
        children = document.get("manifests")
        if not isinstance(children, list):
            raise _invalid("manifests must be an array of descriptors")
        for position, child in enumerate(children):
            descriptor = _descriptor(child, f"manifests[{position}]")
            references.append(Reference(descriptor["digest"], "manifest"))
    return ParsedManifest(
        media_type=media_type,
        references=references,
        subject=None if subject is None else subject["digest"],
        artifact_type=artifact_type,
        annotations=annotations,
        document=document,
    )


def decode_manifest(content: bytes) -> dict[str, Any]:
    """The manifest's JSON object, decoded the one way every client reads it (MANIFEST_INVALID
    with the reason otherwise)."""
    try:
        document = loads(content, MANIFEST, what="manifest")
    except AmbiguousJSON as exc:
        raise _invalid(str(exc)) from None
    if not isinstance(document, dict):
        raise _invalid("manifest must be a JSON object")
    return document


def _unambiguous_kind(document: Mapping[str, Any], media_type: str) -> None:
    """Refuse a document that is both an index and an image manifest, or whose fields do not
    fit its media type (containers/image refuses these too): clients that decide by field and
    clients that decide by media type would read different things."""
    has_children = "manifests" in document
    image_fields = [k for k in ("config", "layers") if k in document]
    if has_children and image_fields:
        raise _invalid(
            f"ambiguous manifest: it has both manifests and {' and '.join(image_fields)}"
        )
    if media_type in INDEXES and image_fields:
        raise _invalid(f"an index ({media_type}) must not have {' or '.join(image_fields)}")
    if media_type in IMAGE_MANIFESTS and has_children:
        raise _invalid(f"an image manifest ({media_type}) must not have manifests")


def platform_string(platform: Mapping[str, Any] | None) -> str | None:
    """`os/architecture[/variant]` of an OCI platform object, or None."""
    if not isinstance(platform, Mapping):
        return None
    os_name, arch = platform.get("os"), platform.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        return None
    variant = platform.get("variant")
    return f"{os_name}/{arch}" + (f"/{variant}" if isinstance(variant, str) and variant else "")


def _media_type(document: dict[str, Any], content_type: str) -> str:
    declared = document.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    if content_type in DOCKER_SCHEMA1 or declared in DOCKER_SCHEMA1:
        raise _invalid("Docker schema 1 manifests are not supported; push schema 2 or OCI")
    if content_type not in _GENERIC_CONTENT_TYPES:
        if content_type not in MANIFEST_MEDIA_TYPES:
            raise _invalid(f"unsupported manifest media type {content_type!r}")
        if declared is not None and declared != content_type:
            raise _invalid(
                f"Content-Type {content_type!r} does not match the manifest's mediaType "
                f"{declared!r}"
            )
        return content_type
    if declared is not None:
        if declared not in MANIFEST_MEDIA_TYPES:
            raise _invalid(f"unsupported manifest media type {declared!r}")
        return declared
    # Neither header nor body says: OCI allows mediaType to be absent; tell by shape.
    if "manifests" in document:
        return OCI_INDEX
    if "config" in document:
        return OCI_MANIFEST
    raise _invalid("cannot tell the manifest's media type: set Content-Type or mediaType")


def _descriptor(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be a descriptor object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType must be a non-empty string")
    digest = value.get("digest")
    if not isinstance(digest, str):
        raise _invalid(f"{where}.digest must be a string")
    try:
        parse_digest(digest)
    except OciError as exc:
        raise _invalid(f"{where}.digest {digest[:80]!r} is not a valid digest") from exc
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}.size must be a non-negative integer")
    urls = value.get("urls")
    if urls is not None and (
        not isinstance(urls, list) or not all(isinstance(u, str) for u in urls)
    ):
        raise _invalid(f"{where}.urls must be an array of strings")
    _annotations(value.get("annotations"), f"{where}.annotations")
    platform = value.get("platform")
    if platform is not None and (
        not isinstance(platform, dict)
        or not all(isinstance(platform.get(k), str) for k in ("os", "architecture"))
        or not isinstance(platform.get("variant", ""), str)
    ):
        raise _invalid(f"{where}.platform must be an object with string os and architecture")
    return value


def _optional_descriptor(document: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = document.get(key)
    return None if value is None else _descriptor(value, key)


def _annotations(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _invalid(f"{where} must be an object of string values")
    return value


def _invalid(reason: str) -> OciError:
    return OciError(MANIFEST_INVALID, {"reason": reason}, message=f"manifest invalid: {reason}")
