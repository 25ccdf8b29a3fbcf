"""Proxied blobs on the S3 backend (a real SeaweedFS): streamed while written as segments,
visible only once verified; an upstream dying midway leaves no object and no upload."""

from __future__ import annotations

import aiohttp
import pytest

from registry.context import CONTEXT
from registry.proxy.routing import PROXY
from storage.oci.digests import parse_digest
from tests.proxy.upstreams import proxy_config, random_layer, sha256
from tests.storage.conftest import s3_storage, seaweed  # noqa: F401  (the SeaweedFS fixture)

NAME = "mirror.test/team/app"


async def test_proxied_blob_on_s3_survives_an_upstream_dying_midway(
    start_client,
    front,
    upstream,
    seaweed,  # noqa: F811
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
