"""The blob-store contract, run against every backend: filesystem and S3 (a real SeaweedFS).

A second store over the same place stands for the registry after a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from storage.blobstore import BlobStore
from storage.filesystem import FilesystemBlobStore
from storage.layout import DataLayout
from storage.oci.digests import Digest
from storage.s3 import S3BlobStore
from storage.settings import S3Settings
from tests.storage.conftest import TEST_PART_SIZE, s3_storage

StoreFactory = Callable[[], BlobStore]


@pytest.fixture(params=["filesystem", "s3"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """A factory of stores over one location: call it again to 'restart'."""
    opened: list[BlobStore] = []
    layout = DataLayout(tmp_path / "data")
    if request.param == "s3":
        server = request.getfixturevalue("seaweed")
        section = s3_storage(server)["s3"]
        for key in ("connect_timeout", "read_timeout"):
            section[key] = float(section[key].rstrip("s"))
        settings = S3Settings(**section)

        def factory() -> BlobStore:
            opened.append(S3BlobStore(settings, layout))
            return opened[-1]

    else:

        def factory() -> BlobStore:
            opened.append(FilesystemBlobStore(layout, fsync=False))
            return opened[-1]

    yield factory
    for store in opened:
        await store.close()


def digest_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def upload(store: BlobStore, data: bytes, chunk: int = 1 << 20) -> str:
    upload_id = uuid.uuid4().hex
    await store.start_upload(upload_id)
    for offset in range(0, len(data), chunk):
        await store.append(upload_id, data[offset : offset + chunk])
    await store.flush(upload_id)
    return upload_id


async def put(store: BlobStore, data: bytes, chunk: int = 1 << 20) -> Digest:
    digest = digest_of(data)
    await store.commit(await upload(store, data, chunk), digest)
    return digest


async def listed(iterator: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in iterator]


@pytest.mark.parametrize("size", [0, 1, 1000, TEST_PART_SIZE, 2 * TEST_PART_SIZE + 12345])
async def test_write_then_read_and_stat(open_store, size):
    store = open_store()
    data = os.urandom(size)
    digest = await put(store, data)
    assert await store.size(digest) == size
    assert await collect(store.read(digest)) == data
    if size:
        assert await collect(store.read(digest, size - 1)) == data[-1:]


async def test_read_ranges(open_store):
    store = open_store()
    data = os.urandom(3 * 1024 * 1024 + 7)
    digest = await put(store, data)
    for start, end in [(0, 1), (10, 20), (1 << 20, (1 << 20) + 5), (len(data) - 3, None), (5, 5)]:
        assert await collect(store.read(digest, start, end)) == data[start:end], (start, end)


async def test_unknown_blob_has_no_size(open_store):
    store = open_store()
    assert await store.size(digest_of(b"never stored")) is None


async def test_upload_size_and_read_upload_follow_appends(open_store):
    store = open_store()
    data = os.urandom(TEST_PART_SIZE + 3 * 1024 * 1024)
    upload_id = uuid.uuid4().hex
    await store.start_upload(upload_id)
    assert await store.upload_size(upload_id) == 0
    for offset in range(0, len(data), 1 << 20):
        await store.append(upload_id, data[offset : offset + (1 << 20)])
        await store.flush(upload_id)
        assert await store.upload_size(upload_id) == min(offset + (1 << 20), len(data))
    assert await collect(store.read_upload(upload_id)) == data
    assert await store.upload_size(uuid.uuid4().hex) is None


async def test_delete_and_list_blobs(open_store):
    store = open_store()
    first, second = await put(store, b"first"), await put(store, b"second blob")
    found = {item.name: item.size for item in await listed(store.list_blobs())}
    assert found == {str(first): 5, str(second): 11}
    await store.delete(first)
    await store.delete(first)  # deleting what is gone is no error
    assert await store.size(first) is None
    assert [item.name for item in await listed(store.list_blobs())] == [str(second)]


async def test_uploads_are_listed_until_committed_or_aborted(open_store):
    store = open_store()
    kept = await upload(store, os.urandom(TEST_PART_SIZE + 10))
    dropped = await upload(store, b"small")
    names = {item.name: item.size for item in await listed(store.list_uploads())}
    assert names == {kept: TEST_PART_SIZE + 10, dropped: 5}
    await store.abort(dropped)
    await store.abort(dropped)  # aborting what is gone is no error
    assert await store.upload_size(dropped) is None
    await store.commit(kept, digest_of(await collect(store.read_upload(kept))))
    assert await listed(store.list_uploads()) == []


async def test_concurrent_writes_of_the_same_digest(open_store):
    store = open_store()
    data = os.urandom(TEST_PART_SIZE + 4096)
    uploads = await asyncio.gather(*(upload(store, data) for _ in range(3)))
    await asyncio.gather(*(store.commit(u, digest_of(data)) for u in uploads))
    assert await collect(store.read(digest_of(data))) == data
    assert [item.name for item in await listed(store.list_blobs())] == [str(digest_of(data))]
    assert await listed(store.list_uploads()) == []


async def test_cancel_leaves_nothing(open_store):
    store = open_store()
    data = os.urandom(2 * TEST_PART_SIZE)
    upload_id = await upload(store, data)
    await store.abort(upload_id)
    assert await store.upload_size(upload_id) is None
    assert await listed(store.list_uploads()) == []
    assert await listed(store.list_blobs()) == []


async def test_resume_after_restart(open_store):
    data = os.urandom(TEST_PART_SIZE + 2 * 1024 * 1024)
    half = TEST_PART_SIZE + 1024 * 1024
    first = open_store()
    upload_id = await upload(first, data[:half])
    second = open_store()  # a new process over the same storage
    assert await second.upload_size(upload_id) == half
    assert await collect(second.read_upload(upload_id)) == data[:half]
    await second.append(upload_id, data[half:])
    await second.commit(upload_id, digest_of(data))  # the last bytes need no flush
    assert await collect(second.read(digest_of(data))) == data


async def test_crash_before_commit_leaves_nothing_visible(open_store):
    data = os.urandom(TEST_PART_SIZE + 100)
    crashed = open_store()
    upload_id = await upload(crashed, data)
    # The process dies here: the digest was never verified, commit never called.
    after = open_store()
    assert await after.size(digest_of(data)) is None
    assert await listed(after.list_blobs()) == []
    assert [item.name for item in await listed(after.list_uploads())] == [upload_id]


async def test_an_upload_cut_back_holds_its_first_bytes_only(open_store):
    store = open_store()
    upload_id = await upload(store, b"abcd")
    await store.append(upload_id, b"EFGHIJ")  # a request that then failed
    await store.drop_pending(upload_id)
    await store.cut_upload(upload_id, 4)
    assert await store.upload_size(upload_id) == 4
    assert await collect(store.read_upload(upload_id)) == b"abcd"
    restarted = open_store()
    assert await restarted.upload_size(upload_id) == 4
    await restarted.append(upload_id, b"efgh")
    await restarted.flush(upload_id)
    await restarted.commit(upload_id, digest_of(b"abcdefgh"))
    assert await collect(restarted.read(digest_of(b"abcdefgh"))) == b"abcdefgh"
    await restarted.cut_upload(upload_id, 0)  # gone: no error


async def test_a_placed_upload_is_never_cut(open_store):
    store = open_store()
    data = os.urandom(1000)
    upload_id = await upload(store, data)
    await store.place(upload_id, digest_of(data))
    await store.cut_upload(upload_id, 10)
    assert await collect(store.read(digest_of(data))) == data
    assert await store.size(digest_of(data)) == 1000
