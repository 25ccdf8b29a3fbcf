"""Build images for library tests in Python: layers, configs, OCI layouts, docker save tarballs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.oci import push_blob

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    """`sha256:<hex>`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(name: str) -> bytes:
    """An uncompressed layer holding one file named after `name` (deterministic)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        data = f"content of {name}\n".encode()
        info = tarfile.TarInfo(f"files/{name}")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class Image:
    """An image: uncompressed layers (diff_ids), stored compressed or not."""

    layers: list[bytes]
    architecture: str = "amd64"
    compress: bool = True
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def diff_ids(self) -> list[str]:
        return [sha256(layer) for layer in self.layers]

    def stored_layers(self) -> list[bytes]:
        """The layer blobs as pushed (gzip with a fixed mtime when compressed)."""
        if not self.compress:
            return list(self.layers)
        return [gzip.compress(layer, mtime=0) for layer in self.layers]

    @property
    def config(self) -> bytes:
        return json.dumps(
            {
                "architecture": self.architecture,
                "os": "linux",
                "config": {"Labels": self.labels},
                "rootfs": {"type": "layers", "diff_ids": self.diff_ids},
            }
        ).encode()

    @property
    def manifest(self) -> bytes:
        layer_type = LAYER_GZIP if self.compress else LAYER_TAR
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": sha256(self.config),
                    "size": len(self.config),
                },
                "layers": [
                    {"mediaType": layer_type, "digest": sha256(b), "size": len(b)}
                    for b in self.stored_layers()
                ],
            }
        ).encode()

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def descriptor(self) -> dict[str, Any]:
        return {
            "mediaType": OCI_MANIFEST,
            "digest": self.digest,
            "size": len(self.manifest),
            "platform": {"os": "linux", "architecture": self.architecture},
        }

    def blobs(self) -> list[bytes]:
        return [self.config, *self.stored_layers()]


def index_of(images: list[Image]) -> bytes:
    """An OCI index of `images`."""
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [i.descriptor() for i in images]}
    ).encode()


def write_oci_layout(root: Path, images: list[Image], *, as_index: bool = False) -> str:
    """An OCI image layout holding `images` (one image, or an index of them); the top digest."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = sha256(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return digest

    for image in images:
        for blob in image.blobs():
            put(blob)
        put(image.manifest)
    if as_index:
        index = index_of(images)
        top = {"mediaType": OCI_INDEX, "digest": put(index), "size": len(index)}
    else:
        top = {k: v for k, v in images[0].descriptor().items() if k != "platform"}
    top["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return top["digest"]


def tar_directory(root: Path, target: Path) -> Path:
    """`root`'s files in a tar at `target`."""
    with tarfile.open(target, "w") as tar:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(root)))
    return target


def write_docker_save(target: Path, image: Image, repo_tag: str = "base:latest") -> Path:
    """An old-style `docker save` tarball (manifest.json, <hex>.json, <id>/layer.tar)."""
    config_name = sha256(image.config).split(":")[1] + ".json"
    layer_names = [f"{sha256(layer).split(':')[1][:16]}/layer.tar" for layer in image.layers]
    files = {
        config_name: image.config,
        "manifest.json": json.dumps(
            [{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]
        ).encode(),
        "repositories": b"{}",
        **dict(zip(layer_names, image.layers, strict=True)),
    }
    with tarfile.open(target, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return target


async def push(client: TestClient, name: str, reference: str, image: Image) -> Any:
    """Push `image` over the API; the manifest PUT response."""
    for blob in image.blobs():
        await push_blob(client, name, blob)
    return await client.put(
        f"/v2/{name}/manifests/{reference}",
        data=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )


async def push_index(client: TestClient, name: str, reference: str, images: list[Image]) -> Any:
    """Push every image by digest, then their index by `reference`."""
    for image in images:
        resp = await push(client, name, image.digest, image)
        assert resp.status == 201, await resp.text()
    return await client.put(
        f"/v2/{name}/manifests/{reference}",
        data=index_of(images),
        headers={"Content-Type": OCI_INDEX},
    )
