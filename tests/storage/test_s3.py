"""What only the S3 backend does: bucket creation, pieces and parts, pointers, redirects, GC.

Against a real SeaweedFS; the fault test starts one of its own so that it can kill it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from registry.app import create_app
from storage.gc import collect_garbage
from storage.layout import DataLayout
from storage.metadata import open_metadata
from storage.s3 import S3BlobStore
from storage.settings import S3Settings
from tests.conftest import make_config, registry_metadata_url
from tests.oci import error_codes, push_blob, push_image, sha256
from tests.storage.conftest import TEST_PART_SIZE, s3_storage
from tests.storage.s3_server import SeaweedS3
from tests.storage.test_blobstore_contract import collect, digest_of, put, upload

MiB = 1024 * 1024


def settings_of(section: dict[str, Any]) -> S3Settings:
    s3 = dict(section["s3"])
    for key in ("connect_timeout", "read_timeout"):
        s3[key] = float(str(s3[key]).rstrip("s"))
    return S3Settings(**s3)


@pytest.fixture
async def s3_store(seaweed, tmp_path):
    store = S3BlobStore(settings_of(s3_storage(seaweed)), DataLayout(tmp_path / "data"))
    yield store
    await store.close()


def keys(store: S3BlobStore, under: str = "") -> list[str]:
    pages = store.client.get_paginator("list_objects_v2").paginate(
        Bucket=store.settings.bucket, Prefix=store.keys.prefix + under
    )
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


async def test_bucket_is_created_when_missing(seaweed, tmp_path):
    section = s3_storage(seaweed, bucket=f"ty-new-{uuid.uuid4().hex[:8]}")
    store = S3BlobStore(settings_of(section), DataLayout(tmp_path / "data"))
    try:
        digest = await put(store, b"into a new bucket")
        assert await collect(store.read(digest)) == b"into a new bucket"
        store.client.head_bucket(Bucket=section["s3"]["bucket"])
    finally:
        await store.close()


def multiparts(store: S3BlobStore) -> list[dict[str, Any]]:
    answer = store.client.list_multipart_uploads(
        Bucket=store.settings.bucket, Prefix=store.keys.prefix
    )
    return list(answer.get("Uploads", []))


async def test_small_chunks_are_pieces_until_a_part_is_full(s3_store, tmp_path):
    upload_id = await upload(s3_store, os.urandom(4 * MiB))
    # Acknowledged bytes below one part: a piece object and the state, no multipart upload.
    assert keys(s3_store, "_uploads/") == [
        s3_store.keys.piece(upload_id, 0),
        s3_store.keys.upload_state(upload_id),
    ]
    assert multiparts(s3_store) == []
    assert not (tmp_path / "data" / "s3-spool").exists()  # nothing on local disk

    await s3_store.append(upload_id, os.urandom(MiB))
    await s3_store.flush(upload_id)
    # One full part went to the data object's multipart upload; the piece it absorbed is gone.
    assert keys(s3_store, "_uploads/") == [s3_store.keys.upload_state(upload_id)]
    [multipart] = multiparts(s3_store)
    assert multipart["Key"] == s3_store.keys.upload_data(upload_id, 0)
    parts = s3_store.client.list_parts(
        Bucket=s3_store.settings.bucket, Key=multipart["Key"], UploadId=multipart["UploadId"]
    )["Parts"]
    assert [part["Size"] for part in parts] == [TEST_PART_SIZE]
    assert await s3_store.upload_size(upload_id) == 5 * MiB


async def test_each_byte_is_sent_once_for_a_part_aligned_stream(s3_store):
    """Bytes that fill parts go to S3 once: no piece is written when a request ends on a part
    boundary, and the commit only completes the multipart upload (no copy)."""
    sent: list[tuple[str, int]] = []
    for client in (s3_store.client, s3_store.data_client):
        for name in ("put_object", "upload_part", "upload_part_copy", "copy_object"):
            real = getattr(client, name)

            def counting(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                body = kwargs.get("Body", b"")
                sent.append((_name, len(body) if isinstance(body, bytes) else 0))
                if isinstance(body, bytes):
                    # Every body carries its SHA-256 for S3 to verify (the payload is unsigned).
                    assert (
                        kwargs["ChecksumSHA256"]
                        == base64.b64encode(hashlib.sha256(body).digest()).decode()
                    )
                return _real(*args, **kwargs)

            setattr(client, name, counting)
    data = os.urandom(3 * TEST_PART_SIZE)
    digest = await put(s3_store, data, chunk=TEST_PART_SIZE)
    assert sum(size for name, size in sent if name == "upload_part") == len(data)
    assert [name for name, _ in sent if name in ("upload_part_copy", "copy_object")] == []
    # Besides the parts: the state twice (start, flush) and the pointer, all small.
    assert all(size < 4096 for name, size in sent if name == "put_object")
    assert await collect(s3_store.read(digest)) == data


async def test_unacknowledged_bytes_are_not_counted_after_a_crash(seaweed, tmp_path):
    """A process that dies mid-request leaves the upload as its last acknowledgement said;
    another process reads exactly those bytes back (rebuilding the hash) and continues."""
    section = s3_storage(seaweed)
    layout = DataLayout(tmp_path / "data")
    data = os.urandom(3 * TEST_PART_SIZE + MiB)
    acknowledged = TEST_PART_SIZE + 2 * MiB
    first = S3BlobStore(settings_of(section), layout)
    upload_id = await upload(first, data[:acknowledged])
    # More bytes arrive (one more part is even sent) but the request never ends.
    await first.append(upload_id, data[acknowledged : acknowledged + TEST_PART_SIZE])
    await first.close()
    second = S3BlobStore(settings_of(section), layout)
    try:
        assert await second.upload_size(upload_id) == acknowledged
        assert await collect(second.read_upload(upload_id)) == data[:acknowledged]
        # Reading it back completed the first multipart upload and started the next
        # generation with a server-side copy of the acknowledged parts.
        [multipart] = multiparts(second)
        assert multipart["Key"] == second.keys.upload_data(upload_id, 1)
        assert await second.upload_size(upload_id) == acknowledged
        await second.append(upload_id, data[acknowledged:])
        await second.commit(upload_id, digest_of(data))
        assert await collect(second.read(digest_of(data))) == data
        assert multiparts(second) == []
        assert keys(second, "_uploads/") == []
        assert keys(second, "_data/") == [second.keys.upload_data(upload_id, 1)]
    finally:
        await second.close()


async def test_commit_leaves_a_pointer_and_its_data_object_and_no_multipart_upload(s3_store):
    data = os.urandom(2 * TEST_PART_SIZE + 777)
    digest = await put(s3_store, data, chunk=MiB)
    [data_key] = keys(s3_store, "_data/")
    assert keys(s3_store) == [data_key, s3_store.keys.blob(digest)]
    head = s3_store.client.head_object(Bucket=s3_store.settings.bucket, Key=keys(s3_store)[1])
    assert head["ContentLength"] == 0
    assert head["Metadata"] == {
        "trustyard-data": data_key[len(s3_store.keys.prefix) :],
        "trustyard-size": str(len(data)),
    }
    assert multiparts(s3_store) == []
    assert await s3_store.size(digest) == len(data)
    # A pointer whose data object is gone is a damaged blob, not a short one.
    s3_store.client.delete_object(Bucket=s3_store.settings.bucket, Key=data_key)
    assert await s3_store.size(digest) is None


async def test_small_blob_is_one_object_under_its_key(s3_store):
    digest = await put(s3_store, b"a config blob")
    assert keys(s3_store) == [s3_store.keys.blob(digest)]


async def test_redirect_answers_307_to_a_presigned_url(aiohttp_client, seaweed, data_dir):
    storage = s3_storage(seaweed, redirect=True, redirect_expiry="2m")
    client = await aiohttp_client(create_app(make_config(data_dir, storage=storage)))
    data = os.urandom(300_000)
    digest = await push_blob(client, "app", data)

    head = await client.head(f"/v2/app/blobs/{digest}")
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(data))

    resp = await client.get(f"/v2/app/blobs/{digest}", allow_redirects=False)
    assert resp.status == 307
    location = resp.headers["Location"]
    assert location.startswith(seaweed.endpoint)
    assert "X-Amz-Expires=120" in location
    async with aiohttp.ClientSession() as session, session.get(location) as direct:
        assert direct.status == 200
        assert await direct.read() == data
    unknown = await client.get(f"/v2/app/blobs/{sha256(b'nope')}", allow_redirects=False)
    assert unknown.status == 404


async def test_unreachable_s3_is_503_with_the_spec_body_not_a_hang(
    aiohttp_client, data_dir, caplog, seaweed
):
    section = s3_storage(seaweed, connect_timeout="1s", max_attempts=2)
    section["s3"]["endpoint_url"] = f"http://127.0.0.1:{_closed_port()}"
    client = await aiohttp_client(create_app(make_config(data_dir, storage=section)))
    began = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="storage.s3"):
        resp = await client.post(f"/v2/app/blobs/uploads/?digest={sha256(b'x')}", data=b"x")
    assert resp.status == 503
    body = await resp.json()
    assert error_codes(body) == ["UNAVAILABLE"]
    assert body["errors"][0]["detail"]["backend"] == "s3"
    assert time.monotonic() - began < 15
    assert any("s3" in record.getMessage() for record in caplog.records)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_gc_lists_with_pagination_and_deletes_in_batches(
    seaweed, tmp_path, monkeypatch, aiohttp_client
):
    section = s3_storage(seaweed)
    data_dir = tmp_path / "data"
    client = await aiohttp_client(create_app(make_config(data_dir, storage=section)))
    await push_image(client, "app", "v1", layers=[b"kept layer"])
    loose = await push_blob(client, "app", b"never referenced")

    store = S3BlobStore(settings_of(section), DataLayout(data_dir))
    store.list_page_size = 7
    monkeypatch.setattr("storage.gc.ORPHAN_BATCH", 10)
    orphans = [os.urandom(16) for _ in range(23)]
    for blob in orphans:  # objects the database never heard of (a crash before linking)
        store.client.put_object(
            Bucket=store.settings.bucket, Key=store.keys.blob(digest_of(blob)), Body=blob
        )
    stale = await upload(store, b"abandoned upload")
    multipart = store.client.create_multipart_upload(
        Bucket=store.settings.bucket, Key=store.keys.blob(digest_of(b"died in commit"))
    )
    delete_calls: list[int] = []
    real_delete = store.client.delete_objects

    def counting_delete(**kwargs: Any) -> Any:
        delete_calls.append(len(kwargs["Delete"]["Objects"]))
        return real_delete(**kwargs)

    store.client.delete_objects = counting_delete  # type: ignore[method-assign]
    db = await open_metadata(DataLayout(data_dir).database, registry_metadata_url())
    try:
        report = await collect_garbage(
            db, store, grace_period=0, stale_upload_age=0, now=time.time() + 5
        )
    finally:
        await db.close()
        await store.close()
    assert report.blobs == [loose]
    assert sorted(report.orphan_files) == sorted(str(digest_of(b)) for b in orphans)
    assert stale in report.uploads
    assert f"multipart {multipart['UploadId']} {multipart['Key']}" in report.uploads
    # Listed 10 at a time; each batch of orphans is one DeleteObjects moving them to the trash
    # and one emptying it (plus the same two for the one unreferenced blob); the abandoned
    # upload is its piece, then its state (deleted last, so a half-done abort stays listed).
    assert max(delete_calls) <= 10
    assert sum(delete_calls) == 2 * (23 + 1) + 2
    assert len(delete_calls) <= 2 * 3 + 2 + 2
    assert not DataLayout(data_dir).spool(stale).exists()
    assert (
        store.client.list_multipart_uploads(
            Bucket=store.settings.bucket, Prefix=store.keys.prefix
        ).get("Uploads", [])
        == []
    )
    assert (await client.head(f"/v2/app/blobs/{loose}")).status == 404
    assert await (await client.get(f"/v2/app/blobs/{sha256(b'kept layer')}")).read() == (
        b"kept layer"
    )


async def test_s3_killed_in_the_middle_of_a_push(aiohttp_client, tmp_path):
    server = SeaweedS3(tmp_path / "seaweed")
    server.start()
    try:
        section = s3_storage(server, connect_timeout="1s", read_timeout="5s", max_attempts=2)
        client = await aiohttp_client(create_app(make_config(tmp_path / "data", storage=section)))
        layer = os.urandom(12 * MiB)
        step = 3 * MiB
        resp = await client.post("/v2/app/blobs/uploads/")
        location = resp.headers["Location"]
        resp = await client.patch(
            location, data=layer[:step], headers={"Content-Range": "0-3145727"}
        )
        assert resp.status == 202

        server.stop()  # S3 dies with the upload half done
        began = time.monotonic()
        resp = await client.patch(
            location,
            data=layer[step : 2 * step],
            headers={"Content-Range": f"{step}-{2 * step - 1}"},
        )
        assert resp.status == 503
        assert error_codes(await resp.json()) == ["UNAVAILABLE"]
        resp = await client.put(f"{location}?digest={sha256(layer)}", data=layer[2 * step :])
        assert resp.status >= 500
        assert time.monotonic() - began < 30
        assert (await client.head(f"/v2/app/blobs/{sha256(layer)}")).status == 404

        server.start()
        s3: Any = server.client()
        blob_keys = s3.list_objects_v2(
            Bucket=section["s3"]["bucket"], Prefix=f"{section['s3']['prefix']}/blobs/"
        ).get("Contents", [])
        assert blob_keys == []  # nothing partial became visible

        # The bytes that were received are kept: the same session goes on where it stands...
        status = await client.get(location)
        assert status.status == 204
        received = int(status.headers["Range"].split("-")[1]) + 1
        resp = await client.put(f"{location}?digest={sha256(layer)}", data=layer[received:])
        assert resp.status == 201, await resp.text()
        # ...and a fresh push (what docker does after an error) succeeds too.
        other = os.urandom(7 * MiB)
        await asyncio.wait_for(push_blob(client, "app", other), 60)
        assert await (await client.get(f"/v2/app/blobs/{sha256(other)}")).read() == other
        assert await (await client.get(f"/v2/app/blobs/{sha256(layer)}")).read() == layer
    finally:
        server.stop()


def test_settings_refuse_parts_below_the_s3_minimum(tmp_path: Path):
    section = {"backend": "s3", "s3": {"bucket": "abc", "part_size": 1024}}
    with pytest.raises(Exception, match="part_size"):
        make_config(tmp_path, storage=section)
