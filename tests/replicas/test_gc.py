"""Garbage collection beside several replicas, on both backends: one collection at a time per
metadata database (from whichever machine), and a collection running while two replicas take
pushes never loses a manifest answered 201 nor a blob it references."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiohttp

from storage.layout import DataLayout
from storage.metadata import GC_KEY, open_metadata
from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor, push_blob
from tests.replicas.conftest import Replicas, StartReplicas

#: `trustyard gc`'s exit status when another collection holds the lock (EX_TEMPFAIL).
BUSY = 75
#: How long the pushers and collectors storm.
STORM = 6.0


async def run_gc(replicas: Replicas, data_dir: Path, *extra: str) -> tuple[int, str]:
    """Run `trustyard gc` on the replicas' database; its exit status and what it printed."""
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "registry", "gc", "--data-dir", str(data_dir), *extra],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **replicas.env()},
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_a_second_collection_on_the_database_is_refused_while_one_runs(
    tmp_path: Path, start_replicas: StartReplicas
) -> None:
    replicas = start_replicas()
    # Another machine's collection holds the database's lock (this process stands in for it:
    # the lock, not the data directory's own, is what keeps the two apart).
    db = await open_metadata(DataLayout(replicas.data_dir).database, replicas.metadata_url)
    try:
        async with db.exclusive(GC_KEY, wait=False) as held:
            assert held
            status, out = await run_gc(replicas, replicas.data_dir)
            assert status == BUSY, out
            assert "another gc or fsck is running on this metadata database" in out
            status, out = await run_gc(replicas, replicas.data_dir, "--dry-run")
            assert status == 0, out  # a dry run removes nothing: it needs no lock
        status, out = await run_gc(replicas, replicas.data_dir)
        assert status == 0, out
    finally:
        await db.close()


async def test_collections_beside_two_pushing_replicas_lose_nothing_answered_201(
    start_replicas: StartReplicas,
) -> None:
    replicas = start_replicas()
    stored: list[tuple[str, str, list[bytes]]] = []  # (tag, digest, blobs) answered 201
    collections: list[int] = []
    stop = asyncio.Event()

    async def pusher(session: aiohttp.ClientSession, side: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            tag = f"{side}-{n}"
            config = json.dumps({"os": "linux", "architecture": "amd64", "tag": tag}).encode()
            layers = [f"{tag}-layer-{i}".encode() for i in range(2)] + [b"shared layer"]
            body = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": descriptor(OCI_CONFIG, config),
                    "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
                }
            ).encode()
            for _attempt in range(20):
                for blob in (config, *layers):
                    await push_blob(session, "team/app", blob)  # type: ignore[arg-type]
                async with session.put(
                    f"/v2/team/app/manifests/{tag}",
                    data=body,
                    headers={"Content-Type": OCI_MANIFEST},
                ) as resp:
                    if resp.status == 201:
                        stored.append((tag, resp.headers["Docker-Content-Digest"], layers))
                        break
                    # A collection took a blob between its upload and the manifest (grace 0):
                    # the push is refused, nothing is answered 201, and the client pushes again.
                    answer = await resp.json()
                    assert resp.status == 400, answer
                    assert answer["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN", answer
            else:
                raise AssertionError(f"{tag} never stored")

    async def collector() -> None:
        while not stop.is_set():
            status, out = await run_gc(replicas, replicas.data_dir, "--grace-period", "0s")
            assert status in (0, BUSY), out
            collections.append(status)

    async with (
        aiohttp.ClientSession(base_url=replicas.a.url) as a,
        aiohttp.ClientSession(base_url=replicas.b.url) as b,
    ):
        tasks = [
            asyncio.create_task(pusher(a, "a")),
            asyncio.create_task(pusher(b, "b")),
            asyncio.create_task(collector()),
            asyncio.create_task(collector()),
        ]
        deadline = time.monotonic() + STORM
        while time.monotonic() < deadline and not any(t.done() for t in tasks):
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*tasks)
        assert 0 in collections
        assert len(stored) >= 4
        # Everything answered 201 is whole, through both replicas.
        for tag, digest, layers in stored:
            for session in (a, b):
                async with session.get(
                    f"/v2/team/app/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
                ) as resp:
                    assert resp.status == 200, tag
                    assert resp.headers["Docker-Content-Digest"] == digest
                    manifest = json.loads(await resp.read())
                for described, layer in zip(manifest["layers"], layers, strict=True):
                    async with session.get(f"/v2/team/app/blobs/{described['digest']}") as resp:
                        assert resp.status == 200, (tag, described)
                        assert await resp.read() == layer
