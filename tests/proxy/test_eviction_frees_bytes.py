"""Eviction frees the evicted blobs' bytes at once, on disk (with SQLite and PostgreSQL
metadata) and on S3 (SeaweedFS): the store shrinks by what only the evicted images held, without
a garbage collection; a blob a local repository shares, or a push still under way has mounted,
stays; freed bytes are logged and counted in /metrics."""

from __future__ import annotations

import dataclasses
import json
import logging

from registry.context import CONTEXT
from registry.proxy.routing import PROXY
from storage.oci.digests import parse_digest
from tests.oci import OCI_MANIFEST, push_blob
from tests.proxy.test_eviction import on, pull
from tests.proxy.upstreams import proxy_config, random_layer, sha256
from tests.storage.conftest import s3_storage


async def stored_bytes(client) -> dict[str, int]:
    """Every blob the store holds, with its size."""
    return {b.name: b.size async for b in client.app[CONTEXT].store.list_blobs()}


async def push_local_image(client, name: str, layer_digest: str, layer_size: int) -> None:
    """A local image (its own config) whose layer was mounted from a proxied repository."""
    config_blob = json.dumps({"architecture": "amd64", "os": "linux", "n": name}).encode()
    await push_blob(client, name, config_blob)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config_blob),
            "size": len(config_blob),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer_size,
            }
        ],
    }
    put = await client.put(
        f"/v2/{name}/manifests/v1",
        data=json.dumps(manifest),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert put.status == 201, await put.text()


async def evict_and_check(client, upstream, caplog) -> None:
    layers = {name: random_layer(120_000 + i) for i, name in enumerate("abcd")}
    for name, layer in layers.items():
        await upstream.push_image(f"team/{name}", "v1", [layer])
    evictor = client.app[PROXY].evictor
    manifests = {}
    for name in "abcd":
        manifests[name] = await pull(client, f"mirror.test/team/{name}", "v1")
        await evictor.flush()  # each pull its own time
    # b's layer is shared with a local image; c's is mounted by a push still under way (no
    # manifest references it yet); d was pulled last and stays.
    mount = await client.post(
        f"/v2/local/app/blobs/uploads/?mount={sha256(layers['b'])}&from=mirror.test/team/b"
    )
    assert mount.status == 201, await mount.text()
    await push_local_image(client, "local/app", sha256(layers["b"]), len(layers["b"]))
    pending = await client.post(
        f"/v2/local/pending/blobs/uploads/?mount={sha256(layers['c'])}&from=mirror.test/team/c"
    )
    assert pending.status == 201, await pending.text()

    # Room for what d alone holds: a, b and c go, least recently pulled first, and d stays.
    room = await client.app[CONTEXT].db.exclusive_bytes(["mirror.test/team/d"])
    evictor.settings = dataclasses.replace(evictor.settings, cache_limit=room)
    before = await stored_bytes(client)
    configs = {name: manifests[name]["config"] for name in "abcd"}
    with caplog.at_level(logging.INFO, logger="trustyard.proxy"):
        assert await evictor.evict_once() == 3  # a, b, c: least recently pulled first
    after = await stored_bytes(client)

    # Freed at once: a's layer and the configs of a, b and c (nothing else holds them).
    gone = {sha256(layers["a"]), *(configs[n]["digest"] for n in "abc")}
    assert set(before) - set(after) == gone
    freed = len(layers["a"]) + sum(configs[n]["size"] for n in "abc")
    assert sum(before.values()) - sum(after.values()) == freed
    ctx = client.app[CONTEXT]
    for digest in gone:
        assert await ctx.db.blob_size(digest) is None
        assert await ctx.store.size(parse_digest(digest)) is None
    # Kept: the shared layer (served to the local image), the mounted one, d's blobs.
    shared = await client.get(f"/v2/local/app/blobs/{sha256(layers['b'])}")
    assert shared.status == 200 and await shared.read() == layers["b"]
    mounted = await client.get(f"/v2/local/pending/blobs/{sha256(layers['c'])}")
    assert mounted.status == 200 and await mounted.read() == layers["c"]
    assert sha256(layers["d"]) in after and configs["d"]["digest"] in after

    metrics = await (await client.get("/metrics")).text()
    assert f"trustyard_proxy_evicted_bytes_total {freed}" in metrics
    lines = [r.getMessage() for r in caplog.records if "freed" in r.getMessage()]
    assert any(
        "team/a@" in line
        and f"freed 2 blobs ({len(layers['a']) + configs['a']['size']} bytes)" in line
        for line in lines
    ), lines
    assert any("team/b@" in line and f"({configs['b']['size']} bytes)" in line for line in lines)

    # An evicted image comes back on its next pull, fetched again.
    again = await pull(client, "mirror.test/team/a", "v1")
    assert again["layers"][0]["digest"] == sha256(layers["a"])
    assert await ctx.store.size(parse_digest(sha256(layers["a"]))) == len(layers["a"])


def limited(url: str, ca) -> dict:
    return proxy_config(url, ca, cache_limit=1)  # set to what d holds before the eviction


async def test_eviction_frees_bytes_on_disk(
    start_client, upstream_registry, upstream, caplog, backend_url
):
    client = await start_client(
        **limited(upstream_registry.url, upstream_registry.ca), **on(backend_url)
    )
    await evict_and_check(client, upstream, caplog)


async def test_eviction_frees_bytes_on_s3(
    start_client,
    upstream_registry,
    upstream,
    caplog,
    seaweed,
):
    client = await start_client(
        storage=s3_storage(seaweed), **limited(upstream_registry.url, upstream_registry.ca)
    )
    await evict_and_check(client, upstream, caplog)


async def test_nothing_is_freed_without_a_limit(start_client, upstream_registry, upstream):
    await upstream.push_image("team/a", "v1", [random_layer(50_000)])
    client = await start_client(**proxy_config(upstream_registry.url, upstream_registry.ca))
    await pull(client, "mirror.test/team/a", "v1")
    before = await stored_bytes(client)
    assert await client.app[PROXY].evictor.evict_once() == 0
    assert await stored_bytes(client) == before
