"""A blob pushed under a sha512 digest on S3 is hashed over every byte it will hold.

sha512 digests are not kept as a running hash: the final PUT hashes the upload again from
storage. On S3 the last chunk's bytes are not readable back until flushed, so a hash taken
before the flush covers only the earlier chunks: a client could then name the digest of its
first chunk and have the blob hold more (a content address that lies). The PUT must refuse.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from registry.app import create_app
from tests.conftest import make_config
from tests.oci import error_codes
from tests.storage.conftest import TEST_PART_SIZE, s3_storage
from tests.storage.s3_server import SeaweedS3


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


@pytest.fixture
async def s3_client(aiohttp_client: Any, seaweed: SeaweedS3, data_dir: Path) -> Any:
    return await aiohttp_client(create_app(make_config(data_dir, storage=s3_storage(seaweed))))


@pytest.mark.parametrize("first", [99, TEST_PART_SIZE + 50], ids=["piece", "part"])
async def test_a_sha512_digest_of_only_the_first_chunk_is_refused(
    s3_client: Any, first: int
) -> None:
    data = os.urandom(TEST_PART_SIZE + 200)
    head, tail = data[:first], data[first:]
    resp = await s3_client.post("/v2/a/blobs/uploads/")
    resp = await s3_client.patch(resp.headers["Location"], data=head)
    assert resp.status == 202, await resp.text()
    location = resp.headers["Location"]
    resp = await s3_client.put(f"{location}?digest={sha512(head)}", data=tail)
    assert resp.status == 400, await resp.text()
    body = await resp.json()
    assert error_codes(body) == ["DIGEST_INVALID"]
    assert body["errors"][0]["detail"] == {"expected": sha512(head), "actual": sha512(data)}
    assert (await s3_client.head(f"/v2/a/blobs/{sha512(head)}")).status == 404


async def test_a_sha512_digest_of_every_byte_is_accepted(s3_client: Any) -> None:
    data = os.urandom(TEST_PART_SIZE + 200)
    resp = await s3_client.post("/v2/a/blobs/uploads/")
    resp = await s3_client.patch(resp.headers["Location"], data=data[:99])
    assert resp.status == 202, await resp.text()
    resp = await s3_client.put(f"{resp.headers['Location']}?digest={sha512(data)}", data=data[99:])
    assert resp.status == 201, await resp.text()
    got = await s3_client.get(f"/v2/a/blobs/{sha512(data)}")
    assert got.status == 200 and await got.read() == data
