"""Two requests appending to one upload session at once, sent to two replicas: the first holds the
session, the other is answered as an out-of-order chunk (416 RANGE_INVALID with the session's
current `Range`), and the blob committed at the end holds every byte once — on disk and on S3
(SeaweedFS), with SQLite and PostgreSQL.

Without the session's lock across processes both requests start at the same offset: on disk both
are appended (the upload holds the chunk twice, both answered 202); on S3 each rewrites the
upload's state and one acknowledged chunk is lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from storage.metadata.coordination import upload_key
from tests.replicas.conftest import Replicas, StartReplicas
from tests.replicas.locks import lock_holder

#: A chunk is more than one batch the server hashes and writes at once (1 MiB).
CHUNK = 3 * 1024 * 1024 + 4321
#: Where the first chunk pauses: less than a batch, so the session is still empty meanwhile.
HELD_AFTER = 256 * 1024
#: Only turns a hang into a failure.
PATIENCE = 60.0
OCTETS = {"Content-Type": "application/octet-stream"}


def chunk_headers(start: int, length: int) -> dict[str, str]:
    return {**OCTETS, "Content-Range": f"{start}-{start + length - 1}"}


async def until_held(replicas: Replicas, key: str) -> None:
    """Wait until some process holds `key` (a replica is inside the locked section)."""
    deadline = time.monotonic() + PATIENCE
    while await lock_holder(replicas.data_dir, replicas.metadata_url, key) is None:
        assert time.monotonic() < deadline, f"nobody took {key}"
        await asyncio.sleep(0.01)


async def refused_as_out_of_order(resp: aiohttp.ClientResponse, location: str, end: int) -> None:
    """The answer to a chunk sent while another request writes the session."""
    body: dict[str, Any] = await resp.json()
    assert resp.status == 416, body
    assert [e["code"] for e in body["errors"]] == ["RANGE_INVALID"], body
    assert body["errors"][0]["detail"]["reason"] == "another request is writing this upload"
    assert resp.headers["Range"] == f"0-{max(end, 0)}"
    assert resp.headers["Location"] == location


async def refused_meanwhile(
    replicas: Replicas,
    a: aiohttp.ClientSession,
    b: aiohttp.ClientSession,
    location: str,
    key: str,
    data: bytes,
    digest: str,
) -> None:
    """While replica A streams the first chunk in: every other write of the session is refused."""
    await until_held(replicas, key)
    # The same chunk (a client's retry, another client) to replica B meanwhile: refused at
    # once with where the session stands, whether it appends or finishes.
    async with b.patch(location, data=data[:CHUNK], headers=chunk_headers(0, CHUNK)) as resp:
        await refused_as_out_of_order(resp, location, -1)
    async with b.put(f"{location}?digest={digest}", data=data, headers=OCTETS) as resp:
        await refused_as_out_of_order(resp, location, -1)
    # And to replica A itself: the lock is the session's, not the process's.
    async with a.patch(location, data=data[:CHUNK], headers=chunk_headers(0, CHUNK)) as resp:
        await refused_as_out_of_order(resp, location, -1)


async def test_a_second_append_while_the_first_streams_is_refused_and_nothing_is_mixed(
    start_replicas: StartReplicas, store_args: list[str]
) -> None:
    replicas = start_replicas(*store_args)
    data = os.urandom(2 * CHUNK + 777)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with (
        aiohttp.ClientSession(base_url=replicas.a.url) as a,
        aiohttp.ClientSession(base_url=replicas.b.url) as b,
    ):
        async with a.post("/v2/team/racy/blobs/uploads/") as resp:
            assert resp.status == 202
            location = resp.headers["Location"]
        key = upload_key(location.rsplit("/", 1)[1])

        # The first chunk streams into replica A, held after less than a batch (nothing written
        # yet) until B has been answered.
        go_on = asyncio.Event()

        async def first_chunk() -> AsyncIterator[bytes]:
            yield data[:HELD_AFTER]
            await go_on.wait()
            yield data[HELD_AFTER:CHUNK]

        first = asyncio.create_task(
            a.patch(location, data=first_chunk(), headers=chunk_headers(0, CHUNK))
        )
        try:
            await refused_meanwhile(replicas, a, b, location, key, data, digest)
        except BaseException:
            first.cancel()
            raise

        go_on.set()
        async with await first as resp:
            assert resp.status == 202, await resp.text()
            assert resp.headers["Range"] == f"0-{CHUNK - 1}"

        # The client goes on where the session stands, through the other replica.
        async with b.get(location) as resp:
            assert resp.status == 204
            assert resp.headers["Range"] == f"0-{CHUNK - 1}"
        async with b.patch(
            location, data=data[CHUNK : 2 * CHUNK], headers=chunk_headers(CHUNK, CHUNK)
        ) as resp:
            assert resp.status == 202, await resp.text()
            assert resp.headers["Range"] == f"0-{2 * CHUNK - 1}"
        async with a.put(
            f"{location}?digest={digest}", data=data[2 * CHUNK :], headers=OCTETS
        ) as resp:
            assert resp.status == 201, await resp.text()
        for session in (a, b):
            async with session.get(f"/v2/team/racy/blobs/{digest}") as resp:
                assert resp.status == 200
                assert await resp.read() == data


async def test_chunks_raced_through_both_replicas_are_each_stored_once(
    start_replicas: StartReplicas, store_args: list[str]
) -> None:
    """Each chunk is sent to both replicas at once: exactly one is answered 202 (the other 416,
    by the session's lock or, when it came second, by its start), and the blob is the chunks in
    order, each once."""
    replicas = start_replicas(*store_args)
    rounds = 6
    chunks = [os.urandom(CHUNK // 3 + n) for n in range(rounds)]
    data = b"".join(chunks)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with (
        aiohttp.ClientSession(base_url=replicas.a.url) as a,
        aiohttp.ClientSession(base_url=replicas.b.url) as b,
    ):
        async with a.post("/v2/team/raced/blobs/uploads/") as resp:
            location = resp.headers["Location"]
        offset = 0
        for chunk in chunks:

            async def send(
                session: aiohttp.ClientSession, chunk: bytes = chunk, offset: int = offset
            ) -> int:
                async with session.patch(
                    location, data=chunk, headers=chunk_headers(offset, len(chunk))
                ) as resp:
                    if resp.status == 416:
                        body = await resp.json()
                        assert [e["code"] for e in body["errors"]] == ["RANGE_INVALID"], body
                    else:
                        assert resp.status == 202, await resp.text()
                        assert resp.headers["Range"] == f"0-{offset + len(chunk) - 1}"
                    return resp.status

            statuses = sorted(await asyncio.gather(send(a), send(b)))
            assert statuses == [202, 416]
            offset += len(chunk)
        async with b.put(f"{location}?digest={digest}") as resp:
            assert resp.status == 201, await resp.text()
        async with a.get(f"/v2/team/raced/blobs/{digest}") as resp:
            assert await resp.read() == data
