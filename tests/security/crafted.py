"""Helpers for the attack tests: push hand-made manifests (and their blobs) byte for byte."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor, push_blob

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"


def image_config(labels: dict[str, str] | None = None, **fields: Any) -> bytes:
    """An image config for linux/amd64 with `labels`."""
    document = {"architecture": "amd64", "os": "linux", "config": {"Labels": labels or {}}}
    return json.dumps({**document, **fields}).encode()


async def push_blobs(client: TestClient, name: str, *blobs: bytes) -> None:
    """Upload every blob."""
    for blob in blobs:
        await push_blob(client, name, blob)


async def put_manifest(
    client: TestClient,
    name: str,
    reference: str,
    manifest: dict[str, Any] | bytes,
    media_type: str = OCI_MANIFEST,
) -> ClientResponse:
    """PUT a manifest as given (bytes are sent untouched)."""
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    return await client.put(
        f"/v2/{name}/manifests/{reference}", data=body, headers={"Content-Type": media_type}
    )


async def push_simple_signature(
    client: TestClient, name: str, reference: str, payload: bytes
) -> ClientResponse:
    """A manifest shaped as cosign writes `.sig` manifests: one simple-signing layer."""
    config = image_config()
    await push_blobs(client, name, config, payload)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(SIMPLE_SIGNING, payload)],
    }
    return await put_manifest(client, name, reference, manifest)


async def push_runnable(
    client: TestClient,
    name: str,
    reference: str,
    *,
    config: bytes | None = None,
    config_type: str = OCI_CONFIG,
    layer: bytes = b"runnable layer",
    layer_type: str = OCI_LAYER,
    **extra: Any,
) -> ClientResponse:
    """A runnable image manifest with one layer, plus any `extra` top-level fields."""
    config = config if config is not None else image_config()
    await push_blobs(client, name, config, layer)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config_type, config),
        "layers": [descriptor(layer_type, layer)],
        **extra,
    }
    return await put_manifest(client, name, reference, manifest)
