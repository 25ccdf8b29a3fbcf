"""Blob uploads on S3 through the registry's API, against a real SeaweedFS.

Each byte is sent to S3 once (parts straight into the data object's multipart upload), every
acknowledged byte is in S3 before the 202, an upload continues on another server process after
the first was killed with SIGKILL, a wrong digest leaves nothing, and the part buffers of all
uploads stay within `storage.s3.upload_memory`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from registry.app import create_app
from registry.context import CONTEXT
from storage.gc import collect_garbage
from storage.layout import DataLayout
from storage.metadata import open_metadata
from storage.s3 import S3BlobStore
from storage.settings import S3Settings
from tests.conftest import make_config
from tests.oci import error_codes, sha256
from tests.server_process import start_registry
from tests.storage.conftest import TEST_PART_SIZE, s3_storage
from tests.storage.s3_server import SeaweedS3

MiB = 1024 * 1024
SLOT = TEST_PART_SIZE + MiB  # one part buffer, as the store counts it


def bucket(seaweed: SeaweedS3, section: dict[str, Any], under: str) -> dict[str, int]:
    """Key -> size of every object under `<prefix>/<under>`."""
    client: Any = seaweed.client()
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=section["s3"]["bucket"], Prefix=f"{section['s3']['prefix']}/{under}"
    )
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


def multiparts(seaweed: SeaweedS3, section: dict[str, Any]) -> list[dict[str, Any]]:
    client: Any = seaweed.client()
    answer = client.list_multipart_uploads(
        Bucket=section["s3"]["bucket"], Prefix=f"{section['s3']['prefix']}/"
    )
    return list(answer.get("Uploads", []))


def part_sizes(seaweed: SeaweedS3, section: dict[str, Any], upload: dict[str, Any]) -> list[int]:
    client: Any = seaweed.client()
    answer = client.list_parts(
        Bucket=section["s3"]["bucket"], Key=upload["Key"], UploadId=upload["UploadId"]
    )
    return [part["Size"] for part in answer.get("Parts", [])]


def assert_stored_as_pointer(seaweed: SeaweedS3, section: dict[str, Any], data: bytes) -> None:
    """The blob's key is an empty pointer to the one data object left; nothing else remains."""
    digest = sha256(data)[7:]
    prefix = section["s3"]["prefix"]
    blob_key = f"{prefix}/blobs/sha256/{digest[:2]}/{digest}"
    assert bucket(seaweed, section, "blobs/") == {blob_key: 0}
    [(data_key, size)] = bucket(seaweed, section, "_data/").items()
    assert size == len(data)
    head = seaweed.client().head_object(Bucket=section["s3"]["bucket"], Key=blob_key)  # type: ignore[attr-defined]
    assert f"{prefix}/{head['Metadata']['trustyard-data']}" == data_key
    assert bucket(seaweed, section, "_uploads/") == {}
    assert multiparts(seaweed, section) == []


async def chunks_of(data: bytes, size: int = MiB) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
async def s3_client(aiohttp_client: Any, seaweed: SeaweedS3, data_dir: Path) -> Any:
    section = s3_storage(seaweed)
    client = await aiohttp_client(create_app(make_config(data_dir, storage=section)))
    client.section = section
    return client


def store_of(client: Any) -> S3BlobStore:
    store = client.server.app[CONTEXT].store
    assert isinstance(store, S3BlobStore)
    return store


async def test_monolithic_put_streams_parts_into_one_data_object(s3_client, seaweed):
    data = os.urandom(3 * TEST_PART_SIZE + 12345)
    resp = await s3_client.post("/v2/a/blobs/uploads/")
    resp = await s3_client.put(f"{resp.headers['Location']}?digest={sha256(data)}", data=data)
    assert resp.status == 201, await resp.text()
    assert_stored_as_pointer(seaweed, s3_client.section, data)
    got = await s3_client.get(f"/v2/a/blobs/{sha256(data)}")
    assert got.status == 200
    assert await got.read() == data
    ranged = await s3_client.get(
        f"/v2/a/blobs/{sha256(data)}", headers={"Range": f"bytes={TEST_PART_SIZE - 3}-"}
    )
    assert ranged.status == 206
    assert await ranged.read() == data[TEST_PART_SIZE - 3 :]


async def test_streamed_patch_then_put_without_body(s3_client, seaweed):
    """What docker and skopeo send: one PATCH streaming the blob (chunked transfer encoding,
    no Content-Range), then PUT ?digest= with no body."""
    data = os.urandom(3 * TEST_PART_SIZE + 7)
    resp = await s3_client.post("/v2/a/blobs/uploads/")
    location = resp.headers["Location"]
    resp = await s3_client.patch(location, data=chunks_of(data, 300 * 1024))
    assert resp.status == 202, await resp.text()
    assert resp.headers["Range"] == f"0-{len(data) - 1}"
    # Acknowledged: three parts sent, the last 7 bytes in a piece, the state.
    [upload] = multiparts(seaweed, s3_client.section)
    assert part_sizes(seaweed, s3_client.section, upload) == [TEST_PART_SIZE] * 3
    pieces = bucket(seaweed, s3_client.section, "_uploads/")
    assert sorted(pieces.values())[0] == 7 and len(pieces) == 2
    resp = await s3_client.put(f"{resp.headers['Location']}?digest={sha256(data)}")
    assert resp.status == 201, await resp.text()
    assert_stored_as_pointer(seaweed, s3_client.section, data)
    assert await (await s3_client.get(f"/v2/a/blobs/{sha256(data)}")).read() == data


async def test_many_small_chunks_make_parts_of_the_minimum_size(s3_client, seaweed):
    """Chunks of any size below S3's 5 MiB minimum: the Range header after each is exact,
    and every part but the last is a whole part."""
    rng = random.Random(19)
    data = os.urandom(2 * TEST_PART_SIZE + 3 * MiB + 11)
    resp = await s3_client.post("/v2/a/blobs/uploads/")
    location = resp.headers["Location"]
    start = 0
    while start < len(data):
        chunk = data[start : start + rng.choice([1, 999, 64 * 1024, 700 * 1024, 2 * MiB + 1])]
        resp = await s3_client.patch(
            location,
            data=chunk,
            headers={"Content-Range": f"{start}-{start + len(chunk) - 1}"},
        )
        assert resp.status == 202, await resp.text()
        start += len(chunk)
        assert resp.headers["Range"] == f"0-{start - 1}"
        location = resp.headers["Location"]
        status = await s3_client.get(location)
        assert status.status == 204 and status.headers["Range"] == f"0-{start - 1}"
    [upload] = multiparts(seaweed, s3_client.section)
    assert part_sizes(seaweed, s3_client.section, upload) == [TEST_PART_SIZE] * 2
    resp = await s3_client.put(f"{location}?digest={sha256(data)}")
    assert resp.status == 201, await resp.text()
    assert_stored_as_pointer(seaweed, s3_client.section, data)
    assert await (await s3_client.get(f"/v2/a/blobs/{sha256(data)}")).read() == data


async def test_wrong_digest_leaves_nothing_and_aborts_the_parts(s3_client, seaweed):
    data = os.urandom(2 * TEST_PART_SIZE + 99)
    resp = await s3_client.post("/v2/a/blobs/uploads/")
    location = resp.headers["Location"]
    resp = await s3_client.patch(location, data=data[: TEST_PART_SIZE + 50])
    assert resp.status == 202
    assert len(multiparts(seaweed, s3_client.section)) == 1
    wrong = sha256(data + b"x")
    resp = await s3_client.put(
        f"{resp.headers['Location']}?digest={wrong}", data=data[TEST_PART_SIZE + 50 :]
    )
    assert resp.status == 400
    body = await resp.json()
    assert error_codes(body) == ["DIGEST_INVALID"]
    assert body["errors"][0]["detail"] == {"expected": wrong, "actual": sha256(data)}
    assert bucket(seaweed, s3_client.section, "") == {}
    assert multiparts(seaweed, s3_client.section) == []
    assert (await s3_client.head(f"/v2/a/blobs/{sha256(data)}")).status == 404
    assert (await s3_client.get(location)).status == 404
    assert store_of(s3_client).memory.used == 0


async def test_a_pushed_blob_pushed_again_keeps_one_data_object(s3_client, seaweed):
    data = os.urandom(TEST_PART_SIZE + 1)
    for name in ("one", "two"):
        resp = await s3_client.post(f"/v2/{name}/blobs/uploads/?digest={sha256(data)}", data=data)
        assert resp.status == 201, await resp.text()
    assert_stored_as_pointer(seaweed, s3_client.section, data)


async def test_upload_memory_is_bounded_across_concurrent_uploads(
    aiohttp_client, seaweed, data_dir
):
    """Room for two part buffers: six concurrent multi-part pushes all succeed, waiting for
    room, and never hold more than the budget."""
    section = s3_storage(seaweed, upload_memory=2 * SLOT, upload_memory_wait="60s")
    client = await aiohttp_client(create_app(make_config(data_dir, storage=section)))
    blobs = [os.urandom(2 * TEST_PART_SIZE + i) for i in range(6)]

    async def push(index: int) -> int:
        data = blobs[index]
        resp = await client.post(f"/v2/c{index}/blobs/uploads/")
        location = resp.headers["Location"]
        resp = await client.patch(location, data=chunks_of(data))
        assert resp.status == 202, await resp.text()
        resp = await client.put(f"{resp.headers['Location']}?digest={sha256(data)}")
        return resp.status

    assert await asyncio.gather(*(push(i) for i in range(6))) == [201] * 6
    memory = store_of(client).memory
    assert memory.peak <= 2 * SLOT
    assert memory.peak >= SLOT  # the uploads did use it
    assert memory.used == 0
    for index, data in enumerate(blobs):
        assert await (await client.get(f"/v2/c{index}/blobs/{sha256(data)}")).read() == data


async def test_upload_over_the_memory_budget_is_refused_with_the_reason(
    aiohttp_client, seaweed, data_dir
):
    section = s3_storage(seaweed, upload_memory=SLOT, upload_memory_wait="1s")
    client = await aiohttp_client(create_app(make_config(data_dir, storage=section)))
    memory = store_of(client).memory
    release = asyncio.Event()
    first = os.urandom(3 * MiB)

    async def slow_body() -> AsyncIterator[bytes]:
        yield first[:MiB]
        await release.wait()
        yield first[MiB:]

    resp = await client.post("/v2/a/blobs/uploads/")
    slow_location = resp.headers["Location"]
    slow = asyncio.ensure_future(client.patch(slow_location, data=slow_body()))
    async with asyncio.timeout(30):
        while memory.used < SLOT:  # the slow upload holds the whole budget
            await asyncio.sleep(0.01)
    resp = await client.post("/v2/b/blobs/uploads/")
    location = resp.headers["Location"]
    resp = await client.patch(location, data=b"x" * 1000)
    assert resp.status == 429
    body = await resp.json()
    assert error_codes(body) == ["TOOMANYREQUESTS"]
    assert "storage.s3.upload_memory" in body["errors"][0]["message"]
    assert "in use by 1 uploads" in body["errors"][0]["detail"]["reason"]
    assert resp.headers["Retry-After"] == "5"
    release.set()
    resp = await slow
    assert resp.status == 202
    # The refused upload lost nothing (it had nothing acknowledged) and goes on now.
    resp = await client.patch(location, data=b"x" * 1000)
    assert resp.status == 202
    assert resp.headers["Range"] == "0-999"
    # Between requests an upload keeps its unfinished part only while there is room: the
    # slow upload's 3 MiB made way for this one's buffer, which keeps its 1000 bytes now.
    assert memory.used == 1000
    resp = await client.delete(location)
    assert resp.status == 204
    assert memory.used == 0


def _server_config(tmp_path: Path, section: dict[str, Any]) -> Path:
    path = tmp_path / "trustyard.yaml"
    path.write_text(yaml.safe_dump({"storage": section}))
    return path


async def test_upload_continues_on_a_second_process_after_sigkill(seaweed, tmp_path):
    """The first server dies (SIGKILL) in the middle of a PATCH whose parts were already
    being sent. A second server process on the same data directory and bucket reports exactly
    the acknowledged bytes, rebuilds the hash from S3, and the client finishes from there."""
    section = s3_storage(seaweed)
    config = _server_config(tmp_path, section)
    data = os.urandom(4 * TEST_PART_SIZE + 333)
    acknowledged = TEST_PART_SIZE + 2 * MiB
    first = start_registry(tmp_path / "data", extra_args=["--config", str(config)])
    second = None
    stall = asyncio.Event()
    try:
        async with aiohttp.ClientSession(first.url) as http:
            resp = await http.post("/v2/app/blobs/uploads/")
            location = resp.headers["Location"]
            resp = await http.patch(
                location,
                data=data[:acknowledged],
                headers={"Content-Range": f"0-{acknowledged - 1}"},
            )
            assert resp.status == 202
            assert resp.headers["Range"] == f"0-{acknowledged - 1}"

            async def body() -> AsyncIterator[bytes]:
                async for chunk in chunks_of(
                    data[acknowledged : acknowledged + 2 * TEST_PART_SIZE]
                ):
                    yield chunk
                await stall.wait()  # never: the server dies first

            streaming = asyncio.ensure_future(http.patch(location, data=body()))
            # Wait until bytes of the unacknowledged request reached S3 as parts.
            async with asyncio.timeout(60):
                while True:
                    uploads = multiparts(seaweed, section)
                    if uploads and len(part_sizes(seaweed, section, uploads[0])) >= 2:
                        break
                    await asyncio.sleep(0.05)
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(timeout=30)
            with pytest.raises(aiohttp.ClientError):
                await streaming

        second = start_registry(tmp_path / "data", extra_args=["--config", str(config)])
        async with aiohttp.ClientSession(second.url) as http:
            status = await http.get(location)
            assert status.status == 204
            assert status.headers["Range"] == f"0-{acknowledged - 1}"
            resp = await http.patch(
                location,
                data=data[acknowledged:-100],
                headers={"Content-Range": f"{acknowledged}-{len(data) - 101}"},
            )
            assert resp.status == 202, await resp.text()
            resp = await http.put(f"{location}?digest={sha256(data)}", data=data[-100:])
            assert resp.status == 201, await resp.text()
            got = await http.get(f"/v2/app/blobs/{sha256(data)}")
            assert await got.read() == data
        assert_stored_as_pointer(seaweed, section, data)
    finally:
        stall.set()
        first.stop()
        if second is not None:
            second.stop()


async def test_gc_aborts_abandoned_uploads_and_their_multipart_uploads(
    aiohttp_client, seaweed, data_dir
):
    """An upload abandoned with parts in its multipart upload, and a multipart upload whose
    upload is gone (a crash before its state was written): the stale-upload sweep aborts both
    (AbortMultipartUpload) and leaves nothing under `_uploads/` or `_data/`."""
    section = s3_storage(seaweed)
    await aiohttp_client(create_app(make_config(data_dir, storage=section)))  # the database
    settings = S3Settings(**{**section["s3"], "connect_timeout": 2.0, "read_timeout": 10.0})
    store = S3BlobStore(settings, DataLayout(data_dir))
    abandoned = uuid.uuid4().hex
    await store.start_upload(abandoned)
    await store.append(abandoned, os.urandom(TEST_PART_SIZE + MiB))
    await store.flush(abandoned)
    lost = uuid.uuid4().hex
    orphan = store.client.create_multipart_upload(
        Bucket=settings.bucket, Key=store.keys.upload_data(lost, 0)
    )
    assert len(multiparts(seaweed, section)) == 2
    db = await open_metadata(DataLayout(data_dir).database)
    try:
        report = await collect_garbage(
            db, store, grace_period=0, stale_upload_age=0, now=time.time() + 5
        )
    finally:
        await db.close()
        await store.close()
    assert abandoned in report.uploads
    assert f"multipart {orphan['UploadId']} {orphan['Key']}" in report.uploads
    assert multiparts(seaweed, section) == []
    assert bucket(seaweed, section, "_uploads/") == {}
    assert bucket(seaweed, section, "_data/") == {}
