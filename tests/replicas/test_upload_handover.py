"""A chunked upload started on one replica continues on the other after the first is killed,
on both backends: the session is a row in the shared database and its bytes are in the shared
blob store, and the running hash is rebuilt from those bytes by whichever process continues."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
from collections.abc import AsyncIterator

import aiohttp

from tests.replicas.conftest import StartReplicas

CHUNK = 256 * 1024


async def test_a_chunked_upload_continues_on_another_replica_after_a_kill(
    start_replicas: StartReplicas,
) -> None:
    replicas = start_replicas()
    data = os.urandom(3 * CHUNK + 12345)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with (
        aiohttp.ClientSession(base_url=replicas.a.url) as a,
        aiohttp.ClientSession(base_url=replicas.b.url) as b,
    ):
        async with a.post("/v2/team/big/blobs/uploads/") as resp:
            assert resp.status == 202
            location = resp.headers["Location"]
        async with a.patch(
            location,
            data=data[:CHUNK],
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"0-{CHUNK - 1}",
            },
        ) as resp:
            assert resp.status == 202, await resp.text()
            assert resp.headers["Range"] == f"0-{CHUNK - 1}"

        # The next chunk is cut off half way: the replica is killed while it streams in.
        sent_half = asyncio.Event()

        async def half_then_stall() -> AsyncIterator[bytes]:
            yield data[CHUNK : CHUNK + CHUNK // 2]
            sent_half.set()
            await asyncio.sleep(3600)  # the replica dies meanwhile; cancelled below
            yield b""

        cut = asyncio.create_task(
            a.patch(
                location,
                data=half_then_stall(),
                headers={"Content-Type": "application/octet-stream"},
            )
        )
        await sent_half.wait()
        replicas.a.stop(signal.SIGKILL)
        # The connection dies with the replica, as a client sees it.
        with contextlib.suppress(aiohttp.ClientError):
            await cut

        # The client asks the other replica where the upload stands and goes on from there.
        async with b.get(location) as resp:
            assert resp.status == 204, await resp.text()
            end = int(resp.headers["Range"].split("-")[1])
        assert CHUNK - 1 <= end < CHUNK + CHUNK // 2
        async with b.patch(
            location,
            data=data[end + 1 : 2 * CHUNK],
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{end + 1}-{2 * CHUNK - 1}",
            },
        ) as resp:
            assert resp.status == 202, await resp.text()
        async with b.put(
            f"{location}{'&' if '?' in location else '?'}digest={digest}",
            data=data[2 * CHUNK :],
            headers={"Content-Type": "application/octet-stream"},
        ) as resp:
            assert resp.status == 201, await resp.text()
            assert resp.headers["Docker-Content-Digest"] == digest
        async with b.get(f"/v2/team/big/blobs/{digest}") as resp:
            assert resp.status == 200
            assert await resp.read() == data
