"""S3 requests on pooled connections: none waits for a timeout, and S3 checks every body.

botocore's `Expect: 100-continue` handling leaves an empty PUT's early answer on the pooled
connection, and the next response that follows a `100 Continue` on it was read against that
answer: its headers were lost and the read waited for `read_timeout` (30 s in the end-to-end
tests) before a retry. Each test here runs with one connection per client and no retries, so
such a stall is a failed request (503 UNAVAILABLE, ReadTimeoutError), not a slow one.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from registry.app import create_app
from storage.layout import DataLayout
from storage.s3 import S3BlobStore
from tests.conftest import make_config
from tests.oci import sha256
from tests.storage.conftest import TEST_PART_SIZE, s3_storage
from tests.storage.s3_server import SeaweedS3
from tests.storage.test_s3 import settings_of

#: One connection per client, and a stalled read fails instead of being retried.
NO_STALL = {"max_pool_connections": 1, "read_timeout": "10s", "max_attempts": 1}


@pytest.fixture
async def store(seaweed: SeaweedS3, tmp_path: Path) -> Any:
    store = S3BlobStore(settings_of(s3_storage(seaweed, **NO_STALL)), DataLayout(tmp_path))
    yield store
    await store.close()


def checksum(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def headers_sent(client: Any) -> list[dict[str, str]]:
    """The headers of every request `client` sends from now on (as they go on the wire)."""
    sent: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        sent.append({name.lower(): value for name, value in request.headers.items()})

    client.meta.events.register("before-send.s3", record)
    return sent


async def test_three_chunked_uploads_in_a_row_through_the_registry(
    aiohttp_client: Any, seaweed: SeaweedS3, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """POST, PATCH, PUT three times, as skopeo pushes layers: every blob above a part ends with
    an empty pointer PUT, and the next upload's first request (its state PUT) used to stall."""
    config = make_config(data_dir, storage=s3_storage(seaweed, **NO_STALL))
    client = await aiohttp_client(create_app(config))
    with caplog.at_level(logging.WARNING):
        for size in (TEST_PART_SIZE + 100, TEST_PART_SIZE + 200, TEST_PART_SIZE + 300, 1000):
            data = os.urandom(size)
            resp = await client.post("/v2/s3/stall/blobs/uploads/")
            assert resp.status == 202, await resp.text()
            resp = await client.patch(resp.headers["Location"], data=data)
            assert resp.status == 202, await resp.text()
            resp = await client.put(f"{resp.headers['Location']}?digest={sha256(data)}")
            assert resp.status == 201, await resp.text()
            got = await client.get(f"/v2/s3/stall/blobs/{sha256(data)}")
            assert got.status == 200 and await got.read() == data
    unparsed = [r.getMessage() for r in caplog.records if "Failed to parse" in r.getMessage()]
    assert unparsed == []


async def test_an_empty_put_then_a_put_with_a_body_on_one_connection(store: S3BlobStore) -> None:
    """The pattern that poisoned the connection: an empty object (a blob's pointer), then any
    object with a body; and no request of either client asks for `100 Continue`."""
    sent_data = headers_sent(store.data_client)
    sent_signed = headers_sent(store.client)
    await store._run("test", store._put, store.keys.prefix + "empty", b"", {"a": "b"})
    for number in range(3):
        body = os.urandom(1000 + number)
        await store._run("test", store._put, store.keys.prefix + f"body-{number}", body, None)
        await store._run("test", store._put, store.keys.prefix + f"empty-{number}", b"", None)
    assert await store._run("test", store._head_size, store.keys.prefix + "body-2") == 1002
    assert len(sent_data) == 7
    assert all("expect" not in headers for headers in sent_data + sent_signed)
    assert all("x-amz-checksum-sha256" in headers for headers in sent_data)


@pytest.mark.parametrize("operation", ["put_object", "upload_part"])
async def test_s3_refuses_a_body_that_does_not_match_its_checksum(
    store: S3BlobStore, operation: str
) -> None:
    """The unsigned payload of the data client is covered by `x-amz-checksum-sha256`: a byte
    changed on the way makes S3 refuse the body, nothing is stored."""
    key = store.keys.prefix + "tampered"
    wrong = checksum(b"the bytes that were hashed")

    def send() -> None:
        if operation == "put_object":
            store._put(key, b"the bytes that arrived", None, wrong)
        else:
            multipart = store._create_multipart(key)
            store._upload_part(key, multipart, 1, b"the bytes that arrived", wrong)

    await store._run("test", store._ensure_bucket)
    with pytest.raises(ClientError) as refused:
        await store._local(send)
    assert refused.value.response["Error"]["Code"] == "BadDigest"
    assert await store._run("test", store._head, key) is None
