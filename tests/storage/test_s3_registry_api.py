"""The registry's API tests once more, with blobs in S3 (a real SeaweedFS) instead of on disk.

The test functions of `tests/registry` are collected here a second time; only `start_client`
(and so `client`) differs: it starts the app with `storage.backend: s3`. Tests that look at the
filesystem backend's files are replaced by the S3 checks below them.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.app import create_app
from tests.conftest import ClientFactory, make_config
from tests.oci import error_codes, push_blob, push_image, sha256
from tests.registry import (
    test_blobs,
    test_listing,
    test_manifests,
    test_referrers,
    test_uploads,
)
from tests.storage.conftest import merge_storage
from tests.storage.s3_server import SeaweedS3

#: These inspect `<data-dir>/blobs` and `<data-dir>/uploads`; their S3 versions are below.
FILESYSTEM_ONLY = {
    "test_digest_mismatch_keeps_nothing",
    "test_blob_is_stored_once_across_repositories",
    "test_cancel_then_session_is_unknown",
}

for _module in (test_blobs, test_uploads, test_manifests, test_referrers, test_listing):
    for _name, _test in vars(_module).items():
        if _name.startswith("test_") and _name not in FILESYSTEM_ONLY:
            globals()[_name] = _test


@pytest.fixture
def start_client(aiohttp_client: Any, data_dir, s3_section: dict[str, Any]) -> ClientFactory:
    """Start (or restart) the registry app with blobs in S3 under this test's prefix."""

    async def start(**overrides: Any) -> TestClient:
        merged = merge_storage(s3_section, overrides)
        return await aiohttp_client(create_app(make_config(data_dir, **merged)))

    return start


def s3_keys(seaweed: SeaweedS3, section: dict[str, Any], under: str) -> list[str]:
    """Every key under `<prefix>/<under>` in the test bucket."""
    client: Any = seaweed.client()
    prefix = f"{section['s3']['prefix']}/{under}"
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=section["s3"]["bucket"], Prefix=prefix
    )
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def s3_multiparts(seaweed: SeaweedS3, section: dict[str, Any]) -> list[dict[str, Any]]:
    """Every incomplete multipart upload under the test's prefix."""
    client: Any = seaweed.client()
    answer = client.list_multipart_uploads(
        Bucket=section["s3"]["bucket"], Prefix=f"{section['s3']['prefix']}/"
    )
    return list(answer.get("Uploads", []))


async def test_s3_digest_mismatch_keeps_nothing(client, seaweed, s3_section):
    data = os.urandom(6 * 1024 * 1024)
    resp = await client.post("/v2/a/blobs/uploads/")
    location = resp.headers["Location"]
    resp = await client.put(f"{location}?digest={sha256(b'other')}", data=data)
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["DIGEST_INVALID"]
    assert s3_keys(seaweed, s3_section, "") == []


async def test_s3_blob_is_stored_once_across_repositories(client, seaweed, s3_section):
    for name in ("one", "two"):
        await push_blob(client, name, b"shared bytes")
    assert len(s3_keys(seaweed, s3_section, "blobs/")) == 1


async def test_s3_cancel_leaves_no_piece_part_or_state(client, seaweed, s3_section, data_dir):
    resp = await client.post("/v2/a/blobs/uploads/")
    location = resp.headers["Location"]
    resp = await client.patch(location, data=os.urandom(7 * 1024 * 1024))
    assert resp.status == 202
    # A part in the data object's multipart upload, a piece with the rest, the state.
    assert len(s3_keys(seaweed, s3_section, "_uploads/")) == 2
    assert len(s3_multiparts(seaweed, s3_section)) == 1
    assert (await client.delete(location)).status == 204
    assert (await client.get(location)).status == 404
    assert s3_keys(seaweed, s3_section, "") == []
    assert s3_multiparts(seaweed, s3_section) == []
    assert not (data_dir / "s3-spool").exists()


async def test_s3_image_push_pull_with_large_chunked_layer(client):
    layer = os.urandom(11 * 1024 * 1024 + 3)
    resp = await client.post("/v2/big/blobs/uploads/")
    location = resp.headers["Location"]
    step = 3 * 1024 * 1024  # chunks smaller than a part: pieces until a part is full
    for start in range(0, len(layer), step):
        chunk = layer[start : start + step]
        resp = await client.patch(
            location,
            data=chunk,
            headers={"Content-Range": f"{start}-{start + len(chunk) - 1}"},
        )
        assert resp.status == 202, await resp.text()
        assert resp.headers["Range"] == f"0-{start + len(chunk) - 1}"
        location = resp.headers["Location"]
    resp = await client.put(f"{location}?digest={sha256(layer)}")
    assert resp.status == 201, await resp.text()
    digest, _ = await push_image(client, "big", "v1", layers=[layer])
    assert (await client.get(f"/v2/big/manifests/{digest}")).status == 200
    pulled = await client.get(f"/v2/big/blobs/{sha256(layer)}")
    assert await pulled.read() == layer
    ranged = await client.get(
        f"/v2/big/blobs/{sha256(layer)}", headers={"Range": "bytes=5242870-5242889"}
    )
    assert ranged.status == 206
    assert await ranged.read() == layer[5242870:5242890]
