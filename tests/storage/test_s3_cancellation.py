"""A writer cancelled while its S3 request is in flight leaves nothing behind once aborted.

A thread cannot be stopped: a cancelled `append` whose multipart upload is still being created
(or whose part is still being sent) would otherwise see that request land after the abort that
follows, leaving an incomplete multipart upload no state names (a proxied blob whose upstream
died midway did exactly that). Each test pauses the real request on SeaweedFS at the moment of
the cancellation, so the race is hit every time rather than now and then.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from storage.layout import DataLayout
from storage.s3 import S3BlobStore
from tests.storage.conftest import TEST_PART_SIZE, s3_storage
from tests.storage.s3_server import SeaweedS3
from tests.storage.test_s3 import settings_of


@pytest.fixture
async def store(seaweed: SeaweedS3, tmp_path: Path) -> AsyncIterator[S3BlobStore]:
    store = S3BlobStore(settings_of(s3_storage(seaweed)), DataLayout(tmp_path))
    yield store
    await store.close()


def paused(store: S3BlobStore, name: str) -> tuple[threading.Event, threading.Event]:
    """Hold the store's `name` S3 call (in its worker thread) until released; returns (entered,
    release)."""
    entered, release = threading.Event(), threading.Event()
    real: Callable[..., Any] = getattr(store, name)

    def held(*args: Any) -> Any:
        entered.set()
        release.wait(30)
        return real(*args)

    setattr(store, name, held)
    return entered, release


async def test_an_append_cancelled_while_creating_its_multipart_upload_leaves_nothing(
    store: S3BlobStore,
) -> None:
    await store.start_upload("cancelled")
    entered, release = paused(store, "_create_multipart")
    appending = asyncio.ensure_future(store.append("cancelled", os.urandom(TEST_PART_SIZE + 1)))
    assert await asyncio.to_thread(entered.wait, 30), "the multipart upload was never created"
    appending.cancel()
    # The request is still held: the cancelled writer must not return before it has ended.
    done, _ = await asyncio.wait([appending], timeout=0.3)
    assert not done, "the cancelled append returned while its S3 request was still in flight"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await appending
    await store.abort("cancelled")
    assert [upload async for upload in store.list_uploads()] == []


async def test_an_abort_while_a_part_is_being_sent_leaves_nothing(store: S3BlobStore) -> None:
    await store.start_upload("aborted")
    entered, release = paused(store, "_upload_part")
    await store.append("aborted", os.urandom(TEST_PART_SIZE + 1))  # the part goes on in the back
    assert await asyncio.to_thread(entered.wait, 30), "the part was never sent"
    aborting = asyncio.ensure_future(store.abort("aborted"))
    done, _ = await asyncio.wait([aborting], timeout=0.3)
    assert not done, "the abort finished while a part of the upload was still being sent"
    release.set()
    await aborting
    assert [upload async for upload in store.list_uploads()] == []
