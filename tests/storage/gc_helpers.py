"""Helpers for the garbage-collection and integrity tests: a registry on either backend, pushes
by digest, and a collection run in-process whose store or database can stop at a chosen step
so that a client acts at exactly that moment."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from registry.config import Config
from storage.backends import open_blob_store
from storage.blobstore import BlobStore
from storage.gc import GCReport, collect_garbage
from storage.metadata import SQLiteMetadata
from tests.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    push_blob,
    sha256,
)

Hook = Callable[[], Awaitable[None]]


@dataclass
class Registry:
    """A registry under test: its client, its configuration (for a store of our own)."""

    client: TestClient
    config: Config

    @property
    def data_dir(self) -> Path:
        """The data directory."""
        return self.config.data_dir


async def image(
    client: TestClient, name: str, seed: str, layers: list[bytes] | None = None
) -> dict[str, Any]:
    """Push the config and layers of an image; its manifest (not pushed)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layers = [f"layer {seed}".encode()] if layers is None else layers
    await push_blob(client, name, config)
    for layer in layers:
        await push_blob(client, name, layer)
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    }


def index_of(*children: tuple[str, bytes]) -> dict[str, Any]:
    """An OCI index of (digest, manifest bytes) children."""
    return {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body)}
            for digest, body in children
        ],
    }


async def put_manifest(
    client: TestClient, name: str, manifest: dict[str, Any], reference: str | None = None
) -> tuple[int, str, bytes]:
    """PUT a manifest by tag, or by its own digest; (status, digest, bytes)."""
    body = json.dumps(manifest).encode()
    digest = sha256(body)
    resp = await client.put(
        f"/v2/{name}/manifests/{reference or digest}",
        data=body,
        headers={"Content-Type": manifest["mediaType"]},
    )
    await resp.read()
    return resp.status, digest, body


class HookedStore:
    """A blob store that runs `hook` once, just before (or after) the first call of one of
    `methods`: the moment a client is to act in the middle of a collection."""

    def __init__(
        self, store: BlobStore, hook: Hook, methods: set[str], *, after: bool = False
    ) -> None:
        self._store = store
        self._hook = hook
        self._methods = methods
        self._after = after
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name not in self._methods:
            return attribute

        async def hooked(*args: Any, **kwargs: Any) -> Any:
            if not self.fired and not self._after:
                self.fired = True
                await self._hook()
            result = await attribute(*args, **kwargs)
            if not self.fired and self._after:
                self.fired = True
                await self._hook()
            return result

        return hooked


class HookedDB(SQLiteMetadata):
    """A metadata database that runs `hook` once before its first write transaction."""

    hook: Hook | None = None

    def transaction(self) -> Any:
        hook, self.hook = self.hook, None
        inner = super().transaction()
        if hook is None:
            return inner

        class _Wrapped:
            async def __aenter__(self) -> Any:
                await hook()
                return await inner.__aenter__()

            async def __aexit__(self, *exc: Any) -> Any:
                return await inner.__aexit__(*exc)

        return _Wrapped()


async def run_gc(
    registry: Registry,
    *,
    store_hook: Callable[[BlobStore], BlobStore] | None = None,
    db_hook: Hook | None = None,
    grace: float = 0.0,
    dry_run: bool = False,
    stale: float = 3600.0,
) -> GCReport:
    """One collection over the registry's storage (with no grace: whatever was pushed before
    it started is old, whatever is pushed while it runs is new)."""
    store: BlobStore = open_blob_store(registry.config.blob_store)
    db = await HookedDB.open(registry.config.data_dir / "metadata.sqlite")
    db.hook = db_hook
    try:
        return await collect_garbage(
            db,
            store if store_hook is None else store_hook(store),
            grace_period=grace,
            stale_upload_age=stale,
            dry_run=dry_run,
        )
    finally:
        await db.close()
        await store.close()
