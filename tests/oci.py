"""Test helpers that speak the OCI Distribution API through an aiohttp test client."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp.test_utils import TestClient

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def sha256(data: bytes) -> str:
    """`sha256:<hex>` of data."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    """An OCI descriptor of `data`."""
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def error_codes(body: dict[str, Any]) -> list[str]:
    """The codes of a spec error body."""
    return [entry["code"] for entry in body["errors"]]


async def push_blob(client: TestClient, name: str, data: bytes) -> str:
    """Upload `data` monolithically; return its digest."""
    digest = sha256(data)
    resp = await client.post(f"/v2/{name}/blobs/uploads/?digest={digest}", data=data)
    assert resp.status == 201, await resp.text()
    return digest


async def push_image(
    client: TestClient,
    name: str,
    reference: str,
    *,
    layers: list[bytes] | None = None,
    media_type: str = OCI_MANIFEST,
    extra: dict[str, Any] | None = None,
    architecture: str = "amd64",
) -> tuple[str, bytes]:
    """Push config, layers and an image manifest (its config for linux/`architecture`); return
    (manifest digest, manifest bytes)."""
    config = json.dumps({"architecture": architecture, "os": "linux", "ref": reference}).encode()
    layers = layers if layers is not None else [b"layer-" + reference.encode()]
    await push_blob(client, name, config)
    for layer in layers:
        await push_blob(client, name, layer)
    config_type = (
        OCI_CONFIG
        if media_type == OCI_MANIFEST
        else ("application/vnd.docker.container.image.v1+json")
    )
    layer_type = (
        OCI_LAYER
        if media_type == OCI_MANIFEST
        else ("application/vnd.docker.image.rootfs.diff.tar.gzip")
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": [descriptor(layer_type, layer) for layer in layers],
        **(extra or {}),
    }
    body = json.dumps(manifest, indent=1).encode()
    resp = await client.put(
        f"/v2/{name}/manifests/{reference}", data=body, headers={"Content-Type": media_type}
    )
    assert resp.status == 201, await resp.text()
    return resp.headers["Docker-Content-Digest"], body
