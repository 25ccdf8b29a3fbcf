"""The cache size limit: least recently pulled proxied images are evicted first, with their
signatures and children; content a local repository needs stays; an evicted image is fetched
again on its next pull. Each test runs on both metadata backends (SQLite, PostgreSQL): the
eviction's statements are the same on both."""

from __future__ import annotations

import json

from registry.context import CONTEXT
from registry.proxy.routing import PROXY
from tests.oci import OCI_MANIFEST, push_blob
from tests.proxy.upstreams import proxy_config, random_layer, sha256


async def pull(client, name: str, tag: str) -> dict:
    resp = await client.get(f"/v2/{name}/manifests/{tag}")
    assert resp.status == 200, await resp.text()
    manifest = await resp.json()
    for blob in [manifest["config"], *manifest["layers"]]:
        got = await client.get(f"/v2/{name}/blobs/{blob['digest']}")
        assert got.status == 200, await got.text()
        await got.read()
    await client.app[PROXY].blobs.settled()
    return manifest


def on(backend_url: str | None) -> dict[str, str]:
    """The configuration naming the test's metadata backend (none: SQLite)."""
    return {"metadata": backend_url} if backend_url else {}


async def test_least_recently_pulled_goes_first_and_local_content_stays(
    start_client, upstream_registry, upstream, backend_url
):
    layers = {}
    for name in ("a", "b", "c"):
        layers[name] = random_layer(100_000)
        await upstream.push_image(f"team/{name}", "v1", [layers[name]])
    config = proxy_config(upstream_registry.url, upstream_registry.ca, cache_limit=150_000)
    client = await start_client(**config, **on(backend_url))
    evictor = client.app[PROXY].evictor
    for name in ("a", "b", "c"):
        await pull(client, f"mirror.test/team/{name}", "v1")
        await evictor.flush()  # each pull its own time
    await pull(client, "mirror.test/team/a", "v1")  # a is the most recently pulled now

    # A local image built on b's layer (mounted from the proxied repository) and tagged.
    mount = await client.post(
        f"/v2/local/app/blobs/uploads/?mount={sha256(layers['b'])}&from=mirror.test/team/b"
    )
    assert mount.status == 201, await mount.text()
    config_blob = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    await push_blob(client, "local/app", config_blob)
    local = {
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
                "digest": sha256(layers["b"]),
                "size": len(layers["b"]),
            }
        ],
    }
    put = await client.put(
        "/v2/local/app/manifests/v1", data=json.dumps(local), headers={"Content-Type": OCI_MANIFEST}
    )
    assert put.status == 201, await put.text()

    # Over the limit (a's and c's layers are only proxied; b's is shared): b goes first, then
    # c; a, pulled last, stays.
    assert await evictor.evict_once() == 2
    db = client.app[CONTEXT].db
    assert await db.get_tagged_manifest("mirror.test/team/a", "v1") is not None
    assert await db.get_tagged_manifest("mirror.test/team/b", "v1") is None
    assert await db.get_tagged_manifest("mirror.test/team/c", "v1") is None
    assert await db.blob_in_repository("mirror.test/team/c", sha256(layers["c"])) is None
    # The local image and its layer are untouched.
    local_layer = await client.get(f"/v2/local/app/blobs/{sha256(layers['b'])}")
    assert local_layer.status == 200 and await local_layer.read() == layers["b"]
    assert (await client.get("/v2/local/app/manifests/v1")).status == 200
    # Under the limit now: nothing more goes.
    assert await evictor.evict_once() == 0
    metrics = await (await client.get("/metrics")).text()
    assert 'trustyard_proxy_events_total{event="evicted"} 2' in metrics

    # An evicted image is fetched again on its next pull.
    again = await pull(client, "mirror.test/team/c", "v1")
    assert again["layers"][0]["digest"] == sha256(layers["c"])


async def test_without_a_limit_nothing_is_evicted(
    start_client, upstream_registry, upstream, backend_url
):
    await upstream.push_image("team/a", "v1", [random_layer(50_000)])
    config = proxy_config(upstream_registry.url, upstream_registry.ca)
    client = await start_client(**config, **on(backend_url))
    await pull(client, "mirror.test/team/a", "v1")
    assert await client.app[PROXY].evictor.evict_once() == 0
    assert await client.app[CONTEXT].db.get_tagged_manifest("mirror.test/team/a", "v1")


async def test_the_library_namespace_is_never_evicted(
    start_client, upstream_registry, upstream, tmp_path, backend_url
):
    await upstream.push_image("library/base", "v1", [random_layer(50_000)])
    await upstream.push_image("team/app", "v1", [random_layer(50_000)])
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nlibrary:\n  namespace: library\n  images:\n"
        "    - name: base\n      tags: [v1]\nrules: []\n"
    )
    config = proxy_config(upstream_registry.url, upstream_registry.ca, cache_limit=1)
    config["proxy"]["default_upstream"] = "ref"  # unprefixed names come from the upstream too
    client = await start_client(
        policy={"file": str(tmp_path / "policy.yaml"), "reload": False},
        **config,
        **on(backend_url),
    )
    await pull(client, "library/base", "v1")
    await pull(client, "mirror.test/team/app", "v1")
    # Over a one-byte limit: everything proxied goes, except the library's.
    assert await client.app[PROXY].evictor.evict_once() == 1
    db = client.app[CONTEXT].db
    assert await db.get_tagged_manifest("library/base", "v1") is not None
    assert await db.get_tagged_manifest("mirror.test/team/app", "v1") is None
