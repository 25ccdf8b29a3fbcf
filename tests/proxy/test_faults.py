"""The upstream fails: killed mid-blob, down, moving a tag, serving wrong bytes, and sixteen
clients at once on one uncached blob. Faults come from a front forwarding to the reference
registry (`Front`) or from stopping the reference registry itself."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from registry.context import CONTEXT
from registry.proxy.routing import PROXY
from storage.oci.digests import parse_digest
from tests.oci import error_codes
from tests.proxy.upstreams import proxy_config, random_layer, sha256

NAME = "mirror.test/team/app"


async def stored(client, digest: str) -> bool:
    """Whether the proxy holds blob `digest` anywhere (database or bytes), once its fetches
    have ended (a streaming client has its last bytes while the blob is being committed)."""
    await client.app[PROXY].blobs.settled()
    ctx = client.app[CONTEXT]
    in_db = await ctx.db.blob_size(digest) is not None
    on_disk = await ctx.store.size(parse_digest(digest)) is not None
    uploads = [u async for u in ctx.store.list_uploads()]
    assert not uploads, f"an upload was left behind: {uploads}"
    return in_db or on_disk


async def test_upstream_killed_mid_blob_leaves_nothing_and_a_retry_succeeds(
    start_client, front, upstream
):
    layer = random_layer(4 * 1024 * 1024)
    await upstream.push_image("team/app", "v1", [layer])
    client = await start_client(**proxy_config(front.url, None))
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).status == 200
    digest = sha256(layer)
    front.cut_after[digest] = 1024 * 1024

    resp = await client.get(f"/v2/{NAME}/blobs/{digest}")
    assert resp.status == 200  # the stream had started
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert not await stored(client, digest)

    del front.cut_after[digest]
    retry = await client.get(f"/v2/{NAME}/blobs/{digest}")
    assert retry.status == 200
    assert await retry.read() == layer
    assert await stored(client, digest)
    assert front.blob_gets(digest) == 2


async def test_wrong_bytes_for_a_digest_are_refused_and_nothing_is_stored(
    start_client, front, upstream
):
    layer = random_layer(300_000)
    await upstream.push_image("team/app", "v1", [layer])
    client = await start_client(**proxy_config(front.url, None))
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).status == 200
    digest = sha256(layer)
    front.swap[digest] = random_layer(len(layer))  # same length, other bytes

    streamed = await client.get(f"/v2/{NAME}/blobs/{digest}")
    with pytest.raises(aiohttp.ClientPayloadError):
        await streamed.read()  # cut before the last chunk: never a whole body of wrong bytes
    assert not await stored(client, digest)

    # A blob's final byte is served only once its digest is verified: a range ending there is
    # cut short, and a range of that byte alone is answered with the error, never bytes.
    # (The upstream is held 5 bytes before the end, so the range has begun when it fails.)
    front.hold[digest] = len(layer) - 5
    tail = await client.get(f"/v2/{NAME}/blobs/{digest}", headers={"Range": "bytes=-10"})
    assert tail.status == 206
    assert front.holding.is_set() and not front.release.is_set()
    front.release.set()
    with pytest.raises(aiohttp.ClientPayloadError):
        await tail.read()
    del front.hold[digest]
    assert not await stored(client, digest)
    ranged = await client.get(f"/v2/{NAME}/blobs/{digest}", headers={"Range": "bytes=-1"})
    assert ranged.status == 503
    body = await ranged.json()
    assert error_codes(body) == ["UNAVAILABLE"]
    assert f"not {digest}" in body["errors"][0]["message"]
    assert "nothing was cached" in body["errors"][0]["message"]
    assert not await stored(client, digest)
    metrics = await (await client.get("/metrics")).text()
    assert 'trustyard_proxy_events_total{event="digest_mismatch"} 3' in metrics

    del front.swap[digest]
    good = await client.get(f"/v2/{NAME}/blobs/{digest}")
    assert await good.read() == layer


async def test_sixteen_clients_on_one_uncached_image_cause_one_upstream_fetch_per_blob(
    start_client, front, upstream, upstream_registry
):
    layers = [random_layer(8 * 1024 * 1024), random_layer(1024 * 1024)]
    _, manifest_bytes = await upstream.push_image("team/app", "v1", layers)
    manifest = json.loads(manifest_bytes)
    blobs = {b["digest"]: b["size"] for b in [manifest["config"], *manifest["layers"]]}
    client = await start_client(**proxy_config(front.url, None))
    front.delay = 0.2  # the upstream is slow to start: the clients pile up on one fetch

    async def pull() -> dict[str, bytes]:
        got = await client.get(f"/v2/{NAME}/manifests/v1")
        assert got.status == 200, await got.text()
        bodies = {}
        for digest in blobs:
            resp = await client.get(f"/v2/{NAME}/blobs/{digest}")
            assert resp.status == 200, await resp.text()
            bodies[digest] = await resp.read()
        return bodies

    pulls = await asyncio.gather(*(pull() for _ in range(16)))
    for bodies in pulls:
        assert {d: sha256(b) for d, b in bodies.items()} == {d: d for d in blobs}
    # Counted at the upstream: by the front and by the reference registry's own log.
    registry_requests = upstream_registry.requests()
    for digest in blobs:
        assert front.blob_gets(digest) == 1, digest
        served = sum(
            n for (m, p), n in registry_requests.items() if m == "GET" and p.endswith(digest)
        )
        assert served == 1, digest
    manifest_gets = sum(
        n
        for (m, p, status), n in front.answered.items()
        if m == "GET" and p.endswith("/manifests/v1") and status == 200
    )
    assert manifest_gets == 1


async def test_tag_moved_upstream_is_served_after_the_ttl(start_client, front, upstream):
    old, _ = await upstream.push_image("team/app", "v1", [b"old layer"])
    client = await start_client(**proxy_config(front.url, None, manifest_ttl="1h"))
    first = await client.get(f"/v2/{NAME}/manifests/v1")
    assert first.headers["Docker-Content-Digest"] == old
    new, new_manifest = await upstream.push_image("team/app", "v1", [b"new layer"])
    assert new != old

    # Inside the TTL: the cached digest, the upstream not asked.
    asked = sum(front.requests.values())
    inside = await client.get(f"/v2/{NAME}/manifests/v1")
    assert inside.headers["Docker-Content-Digest"] == old
    assert sum(front.requests.values()) == asked

    # The TTL passed (confirmed two hours ago): a HEAD finds the new digest, which is fetched.
    ctx = client.app[CONTEXT]
    await ctx.db.mark_tag_validated(NAME, "v1", time.time() - 7200)
    after = await client.get(f"/v2/{NAME}/manifests/v1")
    assert after.status == 200
    assert after.headers["Docker-Content-Digest"] == new
    assert await after.read() == new_manifest
    heads = sum(n for (m, p), n in front.requests.items() if m == "HEAD" and "/manifests/" in p)
    assert heads >= 1
    # The old digest stays pullable by digest (immutable), without asking the upstream.
    asked = sum(front.requests.values())
    by_digest = await client.get(f"/v2/{NAME}/manifests/{old}")
    assert by_digest.status == 200
    assert sum(front.requests.values()) == asked

    # Unchanged upstream after the TTL: one HEAD revalidates, nothing is fetched again.
    await ctx.db.mark_tag_validated(NAME, "v1", time.time() - 7200)
    gets = sum(n for (m, p), n in front.requests.items() if m == "GET" and "/manifests/" in p)
    again = await client.get(f"/v2/{NAME}/manifests/v1")
    assert again.headers["Docker-Content-Digest"] == new
    assert gets == sum(
        n for (m, p), n in front.requests.items() if m == "GET" and "/manifests/" in p
    )


async def test_upstream_down_stale_within_the_window_refused_after(
    start_client, upstream_registry, upstream
):
    digest, manifest = await upstream.push_image("team/app", "v1", [b"layer"])
    config = proxy_config(
        upstream_registry.url, upstream_registry.ca, manifest_ttl="5m", stale_if_error="1h"
    )
    client = await start_client(**config)
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).status == 200
    upstream_registry.stop()  # the upstream is gone: connections are refused
    ctx = client.app[CONTEXT]

    # TTL passed, inside the stale-if-error window: the cached copy, with a Warning.
    await ctx.db.mark_tag_validated(NAME, "v1", time.time() - 600)
    stale = await client.get(f"/v2/{NAME}/manifests/v1")
    assert stale.status == 200
    assert await stale.read() == manifest
    assert stale.headers["Warning"].startswith('110 trustyard "Response is Stale:')
    assert "unreachable" in stale.headers["Warning"]

    # Past the window: refused, saying why.
    await ctx.db.mark_tag_validated(NAME, "v1", time.time() - 300 - 3600 - 60)
    refused = await client.get(f"/v2/{NAME}/manifests/v1")
    assert refused.status == 503
    body = await refused.json()
    assert error_codes(body) == ["UNAVAILABLE"]
    assert "outside the stale-if-error window (3900s)" in body["errors"][0]["message"]

    # By digest: immutable, served whatever the upstream does.
    by_digest = await client.get(f"/v2/{NAME}/manifests/{digest}")
    assert by_digest.status == 200 and "Warning" not in by_digest.headers

    # Never cached: refused with the reason.
    unknown = await client.get("/v2/mirror.test/team/other/manifests/v1")
    assert unknown.status == 503
    assert "is not cached" in (await unknown.json())["errors"][0]["message"]

    metrics = await (await client.get("/metrics")).text()
    assert 'trustyard_proxy_events_total{event="stale_served"} 1' in metrics
    assert 'trustyard_proxy_events_total{event="stale_refused"} 2' in metrics


async def test_slow_or_erroring_upstream_gives_the_stale_copy(start_client, front, upstream):
    await upstream.push_image("team/app", "v1", [b"layer"])
    config = proxy_config(front.url, None, manifest_ttl="1h", stale_if_error="1h")
    config["upstreams"][0]["read_timeout"] = "0.5s"
    client = await start_client(**config)
    assert (await client.get(f"/v2/{NAME}/manifests/v1")).status == 200
    ctx = client.app[CONTEXT]

    front.stall = True  # hung: the read timeout gives up
    await ctx.db.mark_tag_validated(NAME, "v1", time.time() - 5400)
    slow = await client.get(f"/v2/{NAME}/manifests/v1")
    assert slow.status == 200
    assert "timed out" in slow.headers["Warning"]

    front.stall, front.down = False, True  # answers 503
    erroring = await client.get(f"/v2/{NAME}/manifests/v1")
    assert erroring.status == 200
    assert "answered 503" in erroring.headers["Warning"]


async def test_wrong_manifest_bytes_are_refused_and_nothing_is_stored(
    start_client, front, upstream
):
    digest, _ = await upstream.push_image("team/app", "v1", [b"real"])
    other, other_manifest = await upstream.push_image("team/app", "v2", [b"other"])
    client = await start_client(**proxy_config(front.url, None))
    # By digest: the upstream answers another manifest.
    front.swap[digest] = other_manifest
    resp = await client.get(f"/v2/{NAME}/manifests/{digest}")
    assert resp.status == 400
    body = await resp.json()
    assert error_codes(body) == ["DIGEST_INVALID"]
    assert f"served a manifest of digest {other} for {digest}" in body["errors"][0]["message"]
    # By tag: bytes that are not what its Docker-Content-Digest claims.
    front.swap["v1"] = other_manifest + b" "
    tagged = await client.get(f"/v2/{NAME}/manifests/v1")
    assert tagged.status == 400
    assert error_codes(await tagged.json()) == ["DIGEST_INVALID"]
    ctx = client.app[CONTEXT]
    assert await ctx.db.get_manifest(NAME, digest) is None
    assert await ctx.db.get_tagged_manifest(NAME, "v1") is None
    assert not await ctx.db.repository_exists(NAME)
