"""Pull-through from the reference registry (TLS from a private CA, htpasswd): manifests and
blobs are fetched, verified, stored and then served from the cache; proxied names are
read-only."""

from __future__ import annotations

import json

import aiohttp

from registry.context import CONTEXT
from registry.proxy.routing import PROXY
from storage.oci.digests import parse_digest
from tests.oci import error_codes
from tests.proxy.upstreams import proxy_config, random_layer, sha256


def upstream_gets(registry, path_end: str) -> int:
    return sum(
        n for (m, p), n in registry.requests().items() if m == "GET" and p.endswith(path_end)
    )


async def test_image_only_upstream_is_pulled_through_then_served_from_the_cache(
    start_client, upstream_registry, upstream
):
    layers = [random_layer(300_000), random_layer(5_000)]
    digest, manifest = await upstream.push_image("team/app", "v1", layers)
    client = await start_client(**proxy_config(upstream_registry.url, upstream_registry.ca))

    got = await client.get("/v2/mirror.test/team/app/manifests/v1")
    assert got.status == 200, await got.text()
    assert await got.read() == manifest
    assert got.headers["Docker-Content-Digest"] == digest
    for layer in layers:
        blob = await client.get(f"/v2/mirror.test/team/app/blobs/{sha256(layer)}")
        assert blob.status == 200, await blob.text()
        assert await blob.read() == layer
        assert blob.headers["Docker-Content-Digest"] == sha256(layer)
    by_digest = await client.get(f"/v2/mirror.test/team/app/manifests/{digest}")
    assert by_digest.status == 200 and await by_digest.read() == manifest

    # Stored like pushed content: the manifest, its tag, its blobs verified on disk.
    await client.app[PROXY].blobs.settled()
    ctx = client.app[CONTEXT]
    assert (await ctx.db.get_tagged_manifest("mirror.test/team/app", "v1")).digest == digest
    for layer in layers:
        assert await ctx.store.size(parse_digest(sha256(layer))) == len(layer)

    # Again: from the cache, the upstream is not asked (manifest inside its TTL, blobs forever).
    manifest_gets = upstream_gets(upstream_registry, "/manifests/v1")
    layer_gets = upstream_gets(upstream_registry, f"/blobs/{sha256(layers[0])}")
    assert (manifest_gets, layer_gets) == (1, 1)
    again = await client.get("/v2/mirror.test/team/app/manifests/v1")
    assert again.status == 200 and await again.read() == manifest
    blob = await client.get(f"/v2/mirror.test/team/app/blobs/{sha256(layers[0])}")
    assert await blob.read() == layers[0]
    assert upstream_gets(upstream_registry, "/manifests/v1") == 1
    assert upstream_gets(upstream_registry, f"/blobs/{sha256(layers[0])}") == 1

    metrics = await (await client.get("/metrics")).text()
    assert 'trustyard_proxy_events_total{event="manifest_fetched"} 1' in metrics
    assert 'trustyard_proxy_events_total{event="blob_fetched"} 3' in metrics  # config, 2 layers


async def test_range_requests_on_uncached_and_cached_blobs(
    start_client, upstream_registry, upstream
):
    layer = random_layer(200_000)
    await upstream.push_image("team/ranges", "v1", [layer])
    client = await start_client(**proxy_config(upstream_registry.url, upstream_registry.ca))
    assert (await client.get("/v2/mirror.test/team/ranges/manifests/v1")).status == 200
    path = f"/v2/mirror.test/team/ranges/blobs/{sha256(layer)}"
    uncached = await client.get(path, headers={"Range": "bytes=1000-1999"})
    assert uncached.status == 206, await uncached.text()
    assert uncached.headers["Content-Range"] == f"bytes 1000-1999/{len(layer)}"
    assert await uncached.read() == layer[1000:2000]
    cached = await client.get(path, headers={"Range": "bytes=-10"})
    assert cached.status == 206 and await cached.read() == layer[-10:]
    assert upstream_gets(upstream_registry, f"/blobs/{sha256(layer)}") == 1


async def test_proxied_names_are_read_only(start_client, upstream_registry, upstream):
    await upstream.push_image("team/ro", "v1", [b"layer"])
    client = await start_client(**proxy_config(upstream_registry.url, upstream_registry.ca))
    manifest = json.dumps({"schemaVersion": 2}).encode()
    attempts = [
        ("POST", "/v2/mirror.test/team/ro/blobs/uploads/"),
        ("PUT", "/v2/mirror.test/team/ro/manifests/v2"),
        ("DELETE", "/v2/mirror.test/team/ro/manifests/v1"),
        ("DELETE", f"/v2/mirror.test/team/ro/blobs/{sha256(b'layer')}"),
    ]
    for method, path in attempts:
        resp = await client.request(method, path, data=manifest)
        assert resp.status == 403, (method, path)
        body = await resp.json()
        assert error_codes(body) == ["DENIED"]
        assert "read-only mirror" in body["errors"][0]["message"]
        assert upstream_registry.url in body["errors"][0]["message"]
    # The local namespace next to it takes pushes as before.
    local = await client.post("/v2/team/ro/blobs/uploads/")
    assert local.status == 202


async def test_unknown_upstream_image_is_manifest_unknown(start_client, upstream_registry):
    client = await start_client(**proxy_config(upstream_registry.url, upstream_registry.ca))
    resp = await client.get("/v2/mirror.test/no/such/manifests/v1")
    assert resp.status == 404
    body = await resp.json()
    assert error_codes(body) == ["MANIFEST_UNKNOWN"]
    assert "upstream ref" in body["errors"][0]["message"]


async def test_wrong_credentials_or_untrusted_ca_are_refused_with_the_reason(
    start_client, upstream_registry, upstream, tmp_path
):
    await upstream.push_image("team/auth", "v1", [b"x"])
    wrong = proxy_config(upstream_registry.url, upstream_registry.ca)
    wrong["upstreams"][0]["password"] = "not-the-password"
    client = await start_client(**wrong)
    resp = await client.get("/v2/mirror.test/team/auth/manifests/v1")
    assert resp.status == 503
    body = await resp.json()
    assert error_codes(body) == ["UNAVAILABLE"]
    assert "refuses our credentials" in body["errors"][0]["message"]

    # Without the private CA, the upstream's certificate is not trusted: nothing is fetched.
    untrusted = proxy_config(upstream_registry.url, None)
    client = await start_client(**untrusted)
    resp = await client.get("/v2/mirror.test/team/auth/manifests/v1")
    assert resp.status == 503
    message = (await resp.json())["errors"][0]["message"]
    assert "certificate" in message.lower() or "ssl" in message.lower()


async def test_only_blobs_of_pulled_images_are_fetched(start_client, upstream_registry, upstream):
    layer = random_layer(10_000)
    await upstream.push_image("team/door", "v1", [layer])
    client = await start_client(**proxy_config(upstream_registry.url, upstream_registry.ca))
    # No manifest pulled yet: the proxy is no open door to the upstream's blobs.
    path = f"/v2/mirror.test/team/door/blobs/{sha256(layer)}"
    before = upstream_gets(upstream_registry, f"/blobs/{sha256(layer)}")
    resp = await client.get(path)
    assert resp.status == 404
    body = await resp.json()
    assert error_codes(body) == ["BLOB_UNKNOWN"]
    assert "pull its manifest first" in body["errors"][0]["message"]
    assert upstream_gets(upstream_registry, f"/blobs/{sha256(layer)}") == before
    # Once the image is pulled: HEAD answers from its descriptor, GET fetches.
    assert (await client.get("/v2/mirror.test/team/door/manifests/v1")).status == 200
    head = await client.head(path)
    assert head.status == 200 and head.headers["Content-Length"] == str(len(layer))
    assert upstream_gets(upstream_registry, f"/blobs/{sha256(layer)}") == before
    got = await client.get(path)
    assert got.status == 200 and await got.read() == layer


async def test_a_manifest_arriving_in_many_pieces_is_read_whole(
    start_client, upstream_registry, upstream
):
    """A large manifest reaches the proxy over many reads of the socket; it is read to its end
    (up to the 4 MiB limit), not cut at the first piece, which would fail its digest."""
    layer = random_layer(1_000)
    _, base_body = await upstream.push_image("team/big", "base", [layer])
    base = json.loads(base_body)
    base["annotations"] = {f"note.{i}": "x" * 200 for i in range(3_000)}  # about 650 KB
    body = json.dumps(base).encode()
    async with aiohttp.ClientSession() as session:
        digest = await upstream.put_manifest(session, "team/big", "v1", body)
    client = await start_client(**proxy_config(upstream_registry.url, upstream_registry.ca))

    got = await client.get("/v2/mirror.test/team/big/manifests/v1")
    assert got.status == 200, await got.text()
    assert await got.read() == body
    assert got.headers["Docker-Content-Digest"] == digest
