"""Clients joining a running fetch stream from it: sixteen clients on one uncached blob get
their first bytes while the upstream is still sending (one upstream GET), a byte range of a
blob being fetched is answered from what arrived, and an upstream dying midway fails every
client and stores nothing. The upstream is held midway by the front (`Front.hold`), so what
each client received is asserted while the fetch provably runs, never by timing."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from registry.context import CONTEXT
from registry.proxy.routing import PROXY
from storage.oci.digests import parse_digest
from tests.proxy.test_faults import stored
from tests.proxy.upstreams import proxy_config, random_layer, sha256

NAME = "mirror.test/team/app"
CLIENTS = 16
HOLD = 1024 * 1024 + 12345  # not a multiple of any buffer size


def held_config(front_url: str, storage: dict | None = None) -> dict:
    """The proxy's settings, with a read timeout longer than any hold of these tests (on the
    storage backend `storage`, when given)."""
    config = proxy_config(front_url, None)
    config["upstreams"][0]["read_timeout"] = "120s"
    if storage is not None:
        config["storage"] = storage
    return config


async def first_bytes_then_rest(client, digest: str, got_first: asyncio.Queue[int]) -> bytes:
    """GET a blob; report the size of the first bytes received, then read the rest."""
    resp = await client.get(f"/v2/{NAME}/blobs/{digest}")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == digest
    first = await resp.content.readany()
    await got_first.put(len(first))
    return first + await resp.read()


async def test_sixteen_clients_stream_one_fetch_before_it_completes(
    start_client,
    front,
    upstream,
    storage_section,
):
    layer = random_layer(4 * 1024 * 1024)
    await upstream.push_image("team/app", "v1", [layer])
    client = await start_client(**held_config(front.url, storage_section))
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).status == 200
    digest = sha256(layer)
    front.hold[digest] = HOLD
    fetcher = client.app[PROXY].blobs

    got_first: asyncio.Queue[int] = asyncio.Queue()
    pulls = [
        asyncio.create_task(first_bytes_then_rest(client, digest, got_first))
        for _ in range(CLIENTS)
    ]
    # Every client has bytes while the upstream is held midway: none waited for the whole blob.
    firsts = [await asyncio.wait_for(got_first.get(), 60) for _ in range(CLIENTS)]
    # (The bytes may have come before the upstream reached its hold: wait for it, then check
    # that nothing let the rest through.)
    await asyncio.wait_for(front.holding.wait(), 60)
    assert not front.release.is_set()
    assert fetcher.running(NAME, parse_digest(digest))
    assert all(0 < n <= HOLD for n in firsts), firsts
    assert await client.app[CONTEXT].db.blob_size(digest) is None  # not visible yet

    front.release.set()
    bodies = await asyncio.gather(*pulls)
    assert all(body == layer for body in bodies)
    assert front.blob_gets(digest) == 1
    assert await stored(client, digest)
    cached = await client.get(f"/v2/{NAME}/blobs/{digest}")
    assert await cached.read() == layer
    assert front.blob_gets(digest) == 1


async def test_a_range_of_a_blob_being_fetched_is_served_from_what_arrived(
    start_client,
    front,
    upstream,
    storage_section,
):
    layer = random_layer(3 * 1024 * 1024)
    await upstream.push_image("team/app", "v1", [layer])
    client = await start_client(**held_config(front.url, storage_section))
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).status == 200
    digest = sha256(layer)
    front.hold[digest] = HOLD

    # Nothing cached, nothing running: the range starts the fetch and is answered from the
    # bytes that arrived, while the upstream is held.
    head = await client.get(f"/v2/{NAME}/blobs/{digest}", headers={"Range": "bytes=100-1099"})
    assert head.status == 206
    assert head.headers["Content-Range"] == f"bytes 100-1099/{len(layer)}"
    assert await head.read() == layer[100:1100]
    # (The bytes may have come before the upstream reached its hold: wait for it, then check
    # that nothing let the rest through.)
    await asyncio.wait_for(front.holding.wait(), 60)
    assert not front.release.is_set()

    # A range past what arrived waits for those bytes; the suffix (the blob's end) for the
    # verified blob.
    later = asyncio.create_task(
        client.get(f"/v2/{NAME}/blobs/{digest}", headers={"Range": f"bytes={HOLD}-{HOLD + 9}"})
    )
    tail = asyncio.create_task(
        client.get(f"/v2/{NAME}/blobs/{digest}", headers={"Range": "bytes=-5"})
    )
    front.release.set()
    later_resp, tail_resp = await later, await tail
    assert later_resp.status == 206 and await later_resp.read() == layer[HOLD : HOLD + 10]
    assert tail_resp.status == 206 and await tail_resp.read() == layer[-5:]
    # Out of range: the spec's answer, even while nothing is cached.
    assert await stored(client, digest)
    beyond = await client.get(f"/v2/{NAME}/blobs/{digest}", headers={"Range": "bytes=99999999-"})
    assert beyond.status == 416
    assert front.blob_gets(digest) == 1


async def test_upstream_killed_midway_fails_every_joiner_and_stores_nothing(
    start_client,
    front,
    upstream,
    storage_section,
):
    layer = random_layer(4 * 1024 * 1024)
    await upstream.push_image("team/app", "v1", [layer])
    client = await start_client(**held_config(front.url, storage_section))
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).status == 200
    digest = sha256(layer)
    front.hold[digest] = HOLD

    got_first: asyncio.Queue[int] = asyncio.Queue()
    pulls = [
        asyncio.create_task(first_bytes_then_rest(client, digest, got_first))
        for _ in range(CLIENTS)
    ]
    for _ in range(CLIENTS):
        await asyncio.wait_for(got_first.get(), 60)
    front.cut_after[digest] = 2 * 1024 * 1024  # the upstream dies after 2 MiB
    front.release.set()
    results = await asyncio.gather(*pulls, return_exceptions=True)
    assert all(isinstance(r, aiohttp.ClientPayloadError) for r in results), results
    assert not await stored(client, digest)
    assert front.blob_gets(digest) == 1

    del front.cut_after[digest]
    del front.hold[digest]
    retry = await client.get(f"/v2/{NAME}/blobs/{digest}")
    assert retry.status == 200 and await retry.read() == layer
    assert await stored(client, digest)
    assert front.blob_gets(digest) == 2


@pytest.mark.parametrize("suffix", ["bytes=0-0", "bytes=-1"])
async def test_a_range_of_a_missing_upstream_blob_is_an_error_not_bytes(
    start_client, front, upstream, suffix
):
    layer = random_layer(200_000)
    await upstream.push_image("team/app", "v1", [layer])
    client = await start_client(**proxy_config(front.url, None))
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).status == 200
    front.down = True  # the upstream answers 503 before any byte
    resp = await client.get(f"/v2/{NAME}/blobs/{sha256(layer)}", headers={"Range": suffix})
    assert resp.status == 503
    body = await resp.json()
    assert body["errors"][0]["code"] == "UNAVAILABLE"
    assert "nothing was cached" in body["errors"][0]["message"]
    assert not await stored(client, sha256(layer))
