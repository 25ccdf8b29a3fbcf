"""Proxied blobs on the S3 backend (a real SeaweedFS): streamed while written as segments,
visible only once verified; an upstream dying midway leaves no object and no upload; clients
joining a fetch, however far behind, stream from its local copy (or, without one, wait for the
verified blob)."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading

import aiohttp
import pytest

from registry.context import CONTEXT
from registry.proxy.routing import PROXY
from storage.oci.digests import parse_digest
from tests.proxy.upstreams import proxy_config, random_layer, sha256
from tests.storage.conftest import s3_storage

NAME = "mirror.test/team/app"


async def test_proxied_blob_on_s3_survives_an_upstream_dying_midway(
    start_client,
    front,
    upstream,
    seaweed,
):
    layer = random_layer(7 * 1024 * 1024)  # more than one 5 MiB part
    await upstream.push_image("team/app", "v1", [layer])
    client = await start_client(storage=s3_storage(seaweed), **proxy_config(front.url, None))
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).status == 200
    digest = sha256(layer)
    ctx = client.app[CONTEXT]

    front.cut_after[digest] = 6 * 1024 * 1024
    cut = await client.get(f"/v2/{NAME}/blobs/{digest}")
    with pytest.raises(aiohttp.ClientPayloadError):
        await cut.read()
    await client.app[PROXY].blobs.settled()
    assert await ctx.store.size(parse_digest(digest)) is None
    assert await ctx.db.blob_size(digest) is None
    assert [u async for u in ctx.store.list_uploads()] == []

    del front.cut_after[digest]
    whole = await client.get(f"/v2/{NAME}/blobs/{digest}")
    assert whole.status == 200 and await whole.read() == layer
    await client.app[PROXY].blobs.settled()
    assert await ctx.store.size(parse_digest(digest)) == len(layer)
    ranged = await client.get(f"/v2/{NAME}/blobs/{digest}", headers={"Range": "bytes=-100"})
    assert ranged.status == 206 and await ranged.read() == layer[-100:]


def _held(front_url: str, storage: dict) -> dict:
    config = proxy_config(front_url, None)
    config["upstreams"][0]["read_timeout"] = "120s"
    return {**config, "storage": storage}


async def _joiner_waits(client) -> None:
    """Until a joiner without a local copy to read waits for the verified blob."""
    stats = client.app[PROXY].stats
    deadline = asyncio.get_running_loop().time() + 60
    while stats.events.get("joiner_waited", 0) == 0:
        assert asyncio.get_running_loop().time() < deadline, "no joiner waited"
        await asyncio.sleep(0.02)


async def test_joiners_far_behind_stream_from_the_local_copy_while_the_fetch_runs(
    start_client,
    front,
    upstream,
    seaweed,
):
    layer = random_layer(20 * 1024 * 1024)  # more than any bytes a fetch could keep in memory
    await upstream.push_image("team/app", "v1", [layer])
    client = await start_client(**_held(front.url, s3_storage(seaweed)))
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).status == 200
    fetcher = client.app[PROXY].blobs
    digest = sha256(layer)
    hold = 18 * 1024 * 1024 + 12345
    front.hold[digest] = hold

    # While the upstream is held 18 MiB in, a client joining at byte 0 is streamed every byte
    # received so far, and a range of the first bytes is answered whole: both from the local
    # copy, neither waiting for the blob to be stored.
    first = await client.get(f"/v2/{NAME}/blobs/{digest}")
    assert first.status == 200
    first_body = asyncio.create_task(first.read())  # the first client keeps reading
    await asyncio.wait_for(front.holding.wait(), 60)
    joiner = await client.get(f"/v2/{NAME}/blobs/{digest}")
    assert joiner.status == 200
    assert await joiner.content.readexactly(hold) == layer[:hold]
    ranged = await client.get(f"/v2/{NAME}/blobs/{digest}", headers={"Range": "bytes=0-99"})
    assert ranged.status == 206 and await ranged.read() == layer[:100]
    assert fetcher.running(NAME, parse_digest(digest))
    assert await client.app[CONTEXT].store.size(parse_digest(digest)) is None

    front.release.set()
    assert await first_body == layer
    assert await joiner.content.read() == layer[hold:]
    assert client.app[PROXY].stats.events.get("joiner_waited", 0) == 0
    assert front.blob_gets(digest) == 1
    await fetcher.settled()
    assert await client.app[CONTEXT].store.size(parse_digest(digest)) == len(layer)


async def test_without_a_local_copy_a_joiner_waits_for_the_verified_blob(
    start_client,
    front,
    upstream,
    seaweed,
):
    layer = random_layer(3 * 1024 * 1024)
    await upstream.push_image("team/app", "v1", [layer])
    client = await start_client(**_held(front.url, s3_storage(seaweed)))
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).status == 200
    fetcher = client.app[PROXY].blobs
    # The local disk cannot take the copy for joiners: where it would go is a file.
    uploads = client.app[CONTEXT].config.data_dir / "uploads"
    if uploads.is_dir():
        uploads.rmdir()
    uploads.write_bytes(b"in the way")
    digest = sha256(layer)
    front.hold[digest] = 1024 * 1024 + 12345

    # The fetch itself goes on (the S3 upload needs no local file); a joiner waits for the
    # verified blob instead of reading a copy, then gets the right bytes.
    first = await client.get(f"/v2/{NAME}/blobs/{digest}")
    assert first.status == 200
    await asyncio.wait_for(front.holding.wait(), 60)
    behind = asyncio.create_task(
        client.get(f"/v2/{NAME}/blobs/{digest}", headers={"Range": "bytes=0-99"})
    )
    await _joiner_waits(client)
    assert not behind.done() and fetcher.running(NAME, parse_digest(digest))
    front.release.set()
    assert await first.read() == layer
    resp = await behind
    assert resp.status == 206 and await resp.read() == layer[:100]
    assert front.blob_gets(digest) == 1
    assert await client.app[CONTEXT].store.size(parse_digest(digest)) == len(layer)


def _slow_get(port: int, path: str, started: threading.Event, resume: threading.Event) -> bytes:
    """GET `path` with a small receive buffer: read the first bytes, then nothing until
    `resume` (the server's writes to it block meanwhile), then the rest."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    connection.sock.settimeout(120)
    connection.sock.connect(("127.0.0.1", port))
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200, response.read()[:500]
        head = response.read(1000)
        started.set()
        resume.wait(120)
        return head + response.read()
    finally:
        connection.close()


async def test_a_joiner_slower_than_the_fetch_reads_the_rest_from_the_local_copy(
    start_client,
    front,
    upstream,
    seaweed,
):
    layer = random_layer(16 * 1024 * 1024)  # far more than the socket buffers hold
    await upstream.push_image("team/app", "v1", [layer])
    client = await start_client(**_held(front.url, s3_storage(seaweed)))
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).status == 200
    digest = sha256(layer)
    front.hold[digest] = 40_000

    first = await client.get(f"/v2/{NAME}/blobs/{digest}")
    assert first.status == 200
    await asyncio.wait_for(front.holding.wait(), 60)
    started, resume = threading.Event(), threading.Event()
    assert client.server is not None and client.server.port is not None
    slow = asyncio.create_task(
        asyncio.to_thread(
            _slow_get, client.server.port, f"/v2/{NAME}/blobs/{digest}", started, resume
        )
    )
    # The joiner has its first bytes while the upstream is held, then stops reading while the
    # rest passes through and the blob is stored; it then reads on from the copy it holds open.
    assert await asyncio.to_thread(started.wait, 60)
    front.release.set()
    assert await first.read() == layer
    await client.app[PROXY].blobs.settled()
    resume.set()
    assert await slow == layer
    assert client.app[PROXY].stats.events.get("joiner_waited", 0) == 0
    assert front.blob_gets(digest) == 1
