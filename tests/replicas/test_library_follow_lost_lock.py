"""A library tag that follows its registry tag after a verification (`signed_by`) moves only
while it holds the registry tag's lock, confirmed just before the move: when its PostgreSQL lock
connection is ended meanwhile and another replica moves the registry tag, the library does not
record the digest the registry tag has left; the move is decided again under a fresh lock.

Two handles on one PostgreSQL database stand for two replicas (each its own pool and lock
connections). The follow is held after it read the registry tag (a step the test releases), so
the other replica's move lands between that read and the follow's commit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from policies.library.history import DatabaseTagLocks, tag_history
from policies.library.signing import follow_tag
from storage.metadata import ManifestRecord, MetadataDB, Reference, open_metadata, tag_key
from tests.replicas.locks import backend_holding

REPOSITORY, TAG = "library/python", "3.12-slim"
LAYER = "sha256:" + "1" * 64
#: Only turns a hang into a failure.
PATIENCE = 60.0


def manifest(n: int) -> ManifestRecord:
    content = json.dumps({"schemaVersion": 2, "n": n}).encode()
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    return ManifestRecord(REPOSITORY, digest, "application/vnd.oci.image.manifest.v1+json", content)


@pytest.fixture
async def replicas(registry_postgres_url: str, tmp_path: Path) -> AsyncIterator[list[MetadataDB]]:
    opened = [
        await open_metadata(tmp_path / f"unused-{n}.sqlite", registry_postgres_url)
        for n in range(2)
    ]
    try:
        yield opened
    finally:
        for db in opened:
            await db.close()


async def test_a_follow_whose_lock_was_lost_does_not_record_a_digest_the_tag_left(
    replicas: list[MetadataDB],
    registry_postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = replicas
    signed, pushed = manifest(1), manifest(2)
    await a.link_blob(REPOSITORY, LAYER, 3)
    await a.put_manifest(signed, [Reference(LAYER, "blob")], TAG)

    # Replica A's follow reads the registry tag (still the signed digest), then waits.
    read, release = asyncio.Event(), asyncio.Event()
    real = a.tag_target
    reads = 0

    async def held_once(repository: str, tag: str) -> str | None:
        nonlocal reads
        target = await real(repository, tag)
        reads += 1
        if reads == 1:
            read.set()
            await release.wait()
        return target

    monkeypatch.setattr(a, "tag_target", held_once)
    caplog.set_level(logging.WARNING, logger="trustyard.library")
    following = asyncio.create_task(
        follow_tag(a, "python", TAG, REPOSITORY, signed.digest, locks=DatabaseTagLocks(a))
    )
    try:
        async with asyncio.timeout(PATIENCE):
            await read.wait()
        # A's lock connection is ended: the server drops its lock, nothing tells A.
        backend = await backend_holding(registry_postgres_url, tag_key(REPOSITORY, TAG))
        assert backend is not None
        admin = await asyncpg.connect(registry_postgres_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", backend)
            deadline = time.monotonic() + PATIENCE
            while await backend_holding(registry_postgres_url, tag_key(REPOSITORY, TAG)):
                assert time.monotonic() < deadline, "the lock's backend did not end"
                await asyncio.sleep(0.01)
        finally:
            await admin.close()
        # Replica B takes the tag's lock, free now, and moves the registry tag (a push).
        locks_b = DatabaseTagLocks(b)
        async with locks_b.tag_guard(REPOSITORY, TAG):
            await locks_b.confirm_tags(REPOSITORY, (TAG,))
            await b.put_manifest(pushed, [Reference(LAYER, "blob")], TAG)
    finally:
        release.set()

    async with asyncio.timeout(PATIENCE):
        moved = await following
    assert moved is False
    assert await b.tag_target(REPOSITORY, TAG) == pushed.digest
    # The library never pointed at the digest the registry tag had left.
    assert await tag_history(b, "python", TAG) == []
    assert reads == 2  # decided again, under a fresh lock
    assert any(
        "not moved: the registry lost its tag lock" in r.getMessage() for r in caplog.records
    ), caplog.text
