"""Every manifest push answered 201 by the real server survives its kill -9, with concurrent
pushes sharing commits (group commit), and a push that fails amid them takes nothing with it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
from pathlib import Path

import aiohttp

from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor
from tests.server_process import start_registry

CLIENTS = 16
REPOSITORIES = 6


def image_manifest(config: bytes, layer: bytes, n: int, layer_digest: str | None = None) -> bytes:
    layer_entry = descriptor(OCI_LAYER, layer)
    if layer_digest is not None:
        layer_entry["digest"] = layer_digest
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [layer_entry],
            "annotations": {"n": str(n)},
        }
    ).encode()


async def push_blobs(session: aiohttp.ClientSession, url: str, blobs: list[bytes]) -> None:
    for r in range(REPOSITORIES):
        for blob in blobs:
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            async with session.post(
                f"{url}/v2/team/r{r}/blobs/uploads/?digest={digest}", data=blob
            ) as resp:
                assert resp.status == 201, await resp.text()


async def push_until_killed(url: str, pid: int, acknowledged_before_kill: int) -> dict:
    """Push from CLIENTS clients; SIGKILL the server the moment `acknowledged_before_kill`
    pushes were answered 201 (others are in flight then). The pushes answered 201."""
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layer = b"durable layer"
    acknowledged: dict[tuple[str, str], str] = {}
    counter = iter(range(1_000_000))
    async with aiohttp.ClientSession() as session:
        await push_blobs(session, url, [config, layer])

        async def client() -> None:
            for n in counter:
                name, tag = f"team/r{n % REPOSITORIES}", f"v{n}"
                body = image_manifest(config, layer, n)
                try:
                    async with session.put(
                        f"{url}/v2/{name}/manifests/{tag}",
                        data=body,
                        headers={"Content-Type": OCI_MANIFEST},
                    ) as resp:
                        status = resp.status
                        await resp.read()
                except aiohttp.ClientError:
                    return  # the server is gone
                assert status == 201, status
                acknowledged[(name, tag)] = "sha256:" + hashlib.sha256(body).hexdigest()
                if len(acknowledged) == acknowledged_before_kill:
                    os.kill(pid, signal.SIGKILL)

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return acknowledged


async def read_back(url: str, acknowledged: dict) -> list[tuple[str, str, int, str]]:
    wrong = []
    async with aiohttp.ClientSession() as session:
        for (name, tag), digest in acknowledged.items():
            async with session.get(
                f"{url}/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
            ) as resp:
                got = resp.headers.get("Docker-Content-Digest", "")
                if resp.status != 200 or got != digest:
                    wrong.append((name, tag, resp.status, got))
    return wrong


def test_every_push_answered_201_survives_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_registry(data)
    try:
        acknowledged = asyncio.run(push_until_killed(server.url, server.process.pid, 300))
        assert server.process.wait(timeout=30) == -signal.SIGKILL
    finally:
        server.stop(signal.SIGKILL)
    assert len(acknowledged) >= 300
    again = start_registry(data)
    try:
        assert asyncio.run(read_back(again.url, acknowledged)) == []
    finally:
        again.stop()


async def mixed_pushes(url: str) -> tuple[list[int], list[str], str]:
    config = json.dumps({"architecture": "amd64", "os": "linux", "mixed": True}).encode()
    layer = b"mixed layer"
    missing = "sha256:" + "d" * 64
    async with aiohttp.ClientSession() as session:
        await push_blobs(session, url, [config, layer])

        async def put(n: int) -> tuple[int, str]:
            bad = n % 7 == 3
            body = image_manifest(config, layer, n, missing if bad else None)
            async with session.put(
                f"{url}/v2/team/r{n % REPOSITORIES}/manifests/m{n}",
                data=body,
                headers={"Content-Type": OCI_MANIFEST},
            ) as resp:
                text = await resp.text()
                return resp.status, text

        answers = await asyncio.gather(*(put(n) for n in range(64)))
    return [status for status, _ in answers], [text for _, text in answers], missing


def test_a_push_that_fails_amid_concurrent_pushes_breaks_none_of_them(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data")
    try:
        statuses, bodies, missing = asyncio.run(mixed_pushes(server.url))
        for n, (status, body) in enumerate(zip(statuses, bodies, strict=True)):
            if n % 7 == 3:
                assert status == 400, body
                assert json.loads(body)["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
                assert missing in body
            else:
                assert status == 201, body

        async def tags() -> dict[str, int]:
            found = {}
            async with aiohttp.ClientSession() as session:
                for n in range(64):
                    async with session.head(
                        f"{server.url}/v2/team/r{n % REPOSITORIES}/manifests/m{n}",
                        headers={"Accept": OCI_MANIFEST},
                    ) as resp:
                        found[f"m{n}"] = resp.status
            return found

        found = asyncio.run(tags())
        assert found == {f"m{n}": 404 if n % 7 == 3 else 200 for n in range(64)}
    finally:
        server.stop()
