"""Proxied blobs on the S3 backend (a real SeaweedFS): streamed while written as segments,
visible only once verified; an upstream dying midway leaves no object and no upload."""

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
    """Until a joiner behind the in-memory window waits for the verified blob."""
    stats = client.app[PROXY].stats
    deadline = asyncio.get_running_loop().time() + 60
    while stats.events.get("joiner_waited", 0) == 0:
        assert asyncio.get_running_loop().time() < deadline, "no joiner waited"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("bound", ["window", "total"])
async def test_a_range_behind_the_window_waits_for_the_verified_blob(
    start_client,
    front,
    upstream,
    seaweed,
    bound,
):
    layer = random_layer(3 * 1024 * 1024)
    await upstream.push_image("team/app", "v1", [layer])
    client = await start_client(**_held(front.url, s3_storage(seaweed)))
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).status == 200
    fetcher = client.app[PROXY].blobs
    if bound == "window":
        fetcher.window = 256 * 1024  # what one fetch keeps in memory for joiners
    else:
        fetcher.windows_total = 0  # what all fetches together keep: full
    digest = sha256(layer)
    hold = 1024 * 1024 + 12345
    front.hold[digest] = hold

    # The first client streams; a range inside the window is answered from memory while the
    # upstream is held, a range of bytes already forgotten waits for the stored blob.
    first = await client.get(f"/v2/{NAME}/blobs/{digest}")
    assert first.status == 200
    await asyncio.wait_for(front.holding.wait(), 60)
    if bound == "window":
        inside = await client.get(
            f"/v2/{NAME}/blobs/{digest}", headers={"Range": f"bytes={hold - 1000}-{hold - 1}"}
        )
        assert inside.status == 206 and await inside.read() == layer[hold - 1000 : hold]
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


async def test_a_joiner_too_slow_for_the_window_carries_on_from_storage(
    start_client,
    front,
    upstream,
    seaweed,
):
    layer = random_layer(16 * 1024 * 1024)  # far more than the socket buffers hold
    await upstream.push_image("team/app", "v1", [layer])
    client = await start_client(**_held(front.url, s3_storage(seaweed)))
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).status == 200
    client.app[PROXY].blobs.window = 64 * 1024
    digest = sha256(layer)
    front.hold[digest] = 40_000  # inside the window: the joiner starts from memory

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
    # The joiner has its first bytes from memory while the upstream is held, then stops
    # reading while the rest passes through.
    assert await asyncio.to_thread(started.wait, 60)
    front.release.set()
    assert await first.read() == layer
    await client.app[PROXY].blobs.settled()
    resume.set()
    assert await slow == layer
    assert client.app[PROXY].stats.events.get("joiner_waited") == 1
    assert front.blob_gets(digest) == 1
