"""What a manifest is, judged by what clients will do with its bytes: an image (something a
container runtime pulls and runs), an index of images, a signature, or another artifact.

Nothing a pusher merely writes decides it: not a tag (`sha256-<hex>.sig`), not `subject`, not
`artifactType`, not a config media type the runtimes happen to not list. What the clients accept
(read in their sources):

* docker (moby `distribution/pull_v2.go`, graph-driver store): the config media type must be
  `application/vnd.docker.container.image.v1+json`, `application/vnd.oci.image.config.v1+json`,
  or one of the loose values old registries sent: `application/octet-stream`,
  `application/json`, `text/html`, or empty. Each layer's media type, lower-cased, must equal or
  start with (then a dot) `application/vnd.oci.image`, `application/vnd.docker`, or one of
  those loose values; the layer's compression is then sniffed from its bytes, not its type.
* containerd (`images/mediatypes.go`, `IsLayerType`; docker's containerd image store, nerdctl,
  Kubernetes): the config is decoded as an image config whatever its media type; a layer is
  unpacked when its type starts with `application/vnd.oci.image.layer.` or is a Docker
  `rootfs.diff` / `rootfs.foreign.diff` type (any `+suffix`).
* containers/image (skopeo, podman, CRI-O; `manifest/oci.go`, `manifest/docker_schema2.go`): an
  OCI manifest is an image when its config is `application/vnd.oci.image.config.v1+json` (other
  configs are "non-image artifacts" it refuses to store); a Docker schema 2 manifest is always
  an image (its layer types are checked against the Docker layer types).

Tried against docker 28 (graph-driver store), skopeo 1.9 and podman 4 (`tests/e2e/
test_fail_closed_clients.py`): docker pulls an image whose config type is `application/json`, and
refuses a Helm config type, a simple-signing layer and an unknown layer type; podman refuses
any OCI config type but the image config ("unsupported image-specific operation on artifact"),
yet with that config it pulls and unpacks a tar archive whatever the layer's media type says,
also when it says cosign simple signing: containers/image sniffs the bytes, not the type.

So a manifest is an **image** when some client would run it: its config type is in any of those
config lists, or any layer has a type some runtime unpacks. It is a **signature** when it has
layers, every one is a signature payload kind (cosign simple signing, a Sigstore bundle, a DSSE
or in-toto envelope, a Notation JWS or COSE envelope), and every payload's first bytes are what
that kind starts with and not an archive (`inert_payload`, checked on the stored bytes by the
policy engine): the clients must be able to fetch signatures to verify them, and podman must find
nothing to unpack. Anything else is an **artifact** (a Helm chart, an SBOM attached with its own
config type): not runnable, yet judged like an image unless the policy names its type as exempt.
"""

from __future__ import annotations

import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from storage.oci.media_types import RUNTIME_CONFIG_TYPES, SIGNATURE_PAYLOAD_TYPES

#: Layer media type prefixes docker accepts (then `.`, or the whole type), lower-cased.
_DOCKER_LAYER_PREFIXES = ("application/vnd.oci.image", "application/vnd.docker")
#: Loose layer media types docker accepts exactly (copied there from its config list).
_DOCKER_LOOSE_TYPES = frozenset({"application/octet-stream", "application/json", "text/html", ""})
#: Docker layer types containerd unpacks, with any `+suffix` removed.
_CONTAINERD_DOCKER_LAYERS = frozenset(
    {
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)


class Kind(StrEnum):
    """What clients do with a manifest."""

    IMAGE = "image"  # a runtime pulls and runs it
    INDEX = "index"  # an image index / manifest list: judged through its children
    SIGNATURE = "signature"  # every layer a signature payload: fetched to verify, never run
    ARTIFACT = "artifact"  # neither runnable nor a signature (exempt only when the policy says)


@dataclass(frozen=True, slots=True)
class Classification:
    """A manifest's kind, its artifact type (for `artifacts.exempt_types`) and why."""

    kind: Kind
    artifact_type: str | None
    reason: str


def _essence(media_type: str) -> str:
    return media_type.split(";")[0].strip().lower()


def runtime_unpacks(layer_type: str) -> bool:
    """Whether docker or containerd unpacks a layer of this media type into a filesystem."""
    lowered = layer_type.lower()
    if lowered in _DOCKER_LOOSE_TYPES or any(
        lowered == p or lowered.startswith(p + ".") for p in _DOCKER_LAYER_PREFIXES
    ):
        return True
    if lowered.startswith("application/vnd.oci.image.layer."):
        return True
    return lowered.split("+")[0] in _CONTAINERD_DOCKER_LAYERS


def classify(manifest: Mapping[str, Any]) -> Classification:
    """The kind of a decoded manifest (see the module docstring for the evidence)."""
    if "manifests" in manifest:
        return Classification(Kind.INDEX, _string(manifest.get("artifactType")), "an index")
    raw_layers = manifest.get("layers")
    layers = raw_layers if isinstance(raw_layers, list) else []
    layer_types = [layer.get("mediaType") if isinstance(layer, dict) else None for layer in layers]
    config = manifest.get("config")
    config_type = config.get("mediaType") if isinstance(config, dict) else None
    artifact_type = _string(manifest.get("artifactType")) or _string(config_type)
    if layer_types and all(t in SIGNATURE_PAYLOAD_TYPES for t in layer_types):
        return Classification(
            Kind.SIGNATURE,
            artifact_type,
            "a signature: every layer is a signature payload and nothing is runnable",
        )
    runnable = [t for t in layer_types if not isinstance(t, str) or runtime_unpacks(t)]
    if runnable:
        return Classification(
            Kind.IMAGE, artifact_type, f"an image: runtimes unpack its {runnable[0]} layer"
        )
    if not isinstance(config_type, str) or _essence(config_type) in RUNTIME_CONFIG_TYPES:
        return Classification(
            Kind.IMAGE, artifact_type, f"an image: runtimes read its {config_type} config"
        )
    return Classification(
        Kind.ARTIFACT, artifact_type, f"an artifact of type {artifact_type}: nothing runnable"
    )


#: Bytes of each signature payload read to tell it from an archive: one tar header and more.
PAYLOAD_HEAD = 1024

#: Compressed streams containers/image and docker recognise by their first bytes.
_COMPRESSION_MAGIC = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"BZh", b"\xfd7zXZ\x00")
#: First byte of a COSE_Sign1 envelope: CBOR tag 18, or the bare four-element array.
_COSE_FIRST = frozenset({0xD2, 0x84})


def inert_payload(media_type: str, head: bytes) -> str | None:
    """Why the first bytes of a signature payload (`head`, up to `PAYLOAD_HEAD`) could be
    unpacked as a filesystem by a client that sniffs bytes instead of media types; None when
    they cannot: they start as the kind says (a JSON object, a COSE envelope), are no
    compressed stream, and their first 512 bytes are no tar header."""
    if media_type == "application/cose":
        if not head or head[0] not in _COSE_FIRST:
            return "its COSE payload does not start as a COSE envelope"
    elif not head.lstrip(b" \t\r\n").startswith(b"{"):
        return f"its {media_type} payload is not a JSON object"
    if head.startswith(_COMPRESSION_MAGIC):
        return "its signature payload is a compressed stream"
    if len(head) >= 512:
        try:
            tarfile.TarInfo.frombuf(head[:512], "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            return None
        return "its signature payload is a tar archive"
    return None


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None
