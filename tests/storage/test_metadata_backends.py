"""The same answers from both metadata backends, where the engines differ: byte order of names
(PostgreSQL's locale order is not SQLite's), row-value paging, integer truncation of buckets,
the garbage-collection rules of `storage.gc_rules` (mark, re-decided delete, dry-run cascade),
and writes from two processes sharing one PostgreSQL (two handles here) running one at a time."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.metadata import (
    DecisionRecord,
    ManifestRecord,
    MetadataDB,
    PostgreSQLMetadata,
    Reference,
    SQLiteMetadata,
    open_metadata,
)

MEDIA = "application/vnd.oci.image.manifest.v1+json"
LAYER = "sha256:" + "a" * 64


@pytest.fixture
async def db(tmp_path: Path, backend_url: str | None) -> AsyncIterator[MetadataDB]:
    opened = await open_metadata(tmp_path / "metadata.sqlite", backend_url)
    assert isinstance(opened, PostgreSQLMetadata if backend_url else SQLiteMetadata)
    try:
        yield opened
    finally:
        await opened.close()


def manifest(repository: str, n: int, subject: str | None = None) -> ManifestRecord:
    content = json.dumps({"schemaVersion": 2, "n": n, "subject": subject}).encode()
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    return ManifestRecord(repository, digest, MEDIA, content, subject=subject)


def test_the_postgresql_backend_implements_the_whole_interface() -> None:
    assert PostgreSQLMetadata.__abstractmethods__ == frozenset()


async def test_names_sort_by_code_point_and_page_alike(db: MetadataDB) -> None:
    tags = ["B", "a", "a-b", "a.b", "a_b", "aB", "Z9", "z", "é", "1"]
    await db.link_blob("repo", LAYER, 3)
    for n, tag in enumerate(tags):
        await db.put_manifest(manifest("repo", n), [Reference(LAYER, "blob")], tag)
    assert await db.list_tags("repo", 100, None) == sorted(tags)
    assert await db.list_tags("repo", 3, "a") == sorted(tags)[sorted(tags).index("a") + 1 :][:3]
    for name in ("lib/b", "lib/a", "lib-x", "Lib/c", "lib/ä"):
        await db.link_blob(name, LAYER, 3)
    names = ["Lib/c", "lib-x", "lib/a", "lib/b", "lib/ä", "repo"]
    assert await db.list_repositories(100, None) == names
    summaries = await db.repository_summaries(limit=10, after=None, prefix="lib/")
    assert [s.name for s in summaries] == ["lib/a", "lib/b", "lib/ä"]
    page = await db.tagged_images(limit=4, after=("repo", "a-b"))
    assert [tag for _, tag, _ in page] == ["a.b", "aB", "a_b", "z"]


async def test_decision_buckets_truncate(db: MetadataDB) -> None:
    since = 1000.0
    times = [1000.0, 1059.9, 1060.0, 1119.99, 1180.5]
    await db.record_decisions(
        DecisionRecord(t, "alice", "pull", "repo", "v1", LAYER, "allow", None, "ok", "p")
        for t in times
    )
    counts = await db.decision_counts(since=since, bucket=60.0)
    assert counts == [(1000.0, "allow", 2), (1060.0, "allow", 2), (1180.0, "allow", 1)]
    newest = await db.list_decisions(limit=2)
    assert [d.time for d in newest] == [1180.5, 1119.99]
    assert newest[0].id > newest[1].id


async def test_the_gc_rules_decide_alike(db: MetadataDB) -> None:
    """An untagged image with a referrer: the dry run follows the cascade (the referrer goes
    once its subject goes), the mark lists what may go now, and a tag added after the mark
    saves the manifest at the re-decided delete."""
    await db.link_blob("repo", LAYER, 7)
    image = manifest("repo", 1)
    await db.put_manifest(image, [Reference(LAYER, "blob")], None)
    referrer = manifest("repo", 2, subject=image.digest)
    await db.put_manifest(referrer, [], None)
    kept = manifest("repo", 3)
    await db.put_manifest(kept, [Reference(LAYER, "blob")], "latest")
    await db.start_upload("0" * 32, "repo")
    future = time.time() + 3600
    simulated = await db.simulate_collection(future, future, delete_untagged=True)
    assert sorted(simulated.manifests) == sorted(
        [("repo", image.digest), ("repo", referrer.digest)]
    )
    assert simulated.blobs == [] and simulated.uploads == ["0" * 32]
    marked = await db.collectable_manifests(future, ("", ""), 100)
    assert marked == [("repo", image.digest)]  # the referrer's subject is still there
    await db.put_manifest(image, [Reference(LAYER, "blob")], "saved")
    assert await db.delete_manifests_if_collectable(future, marked) == []
    assert await db.get_manifest("repo", image.digest) is not None
    assert await db.delete_tag("repo", "saved")
    assert await db.delete_manifests_if_collectable(future, marked) == [0]
    assert await db.delete_manifests_if_collectable(future, [("repo", referrer.digest)]) == [0]
    assert await db.delete_uploads_if_stale(future, ["0" * 32, "1" * 32]) == [0]
    assert await db.collectable_blobs(future, "", 10) == []
    assert await db.delete_manifest("repo", kept.digest)
    assert await db.collectable_blobs(future, "", 10) == [(LAYER, 7)]
    assert await db.delete_blobs_if_collectable(future, [LAYER]) == [0]
    assert await db.blob_size(LAYER) is None


async def test_two_handles_on_one_postgresql_write_one_at_a_time(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two processes' handles (two pools) bump the same counters concurrently: no update is
    lost, because every write transaction holds the database-wide write lock. (A batch moves
    a counter once however many of its jobs moved it: once per commit.)"""
    first = await open_metadata(tmp_path / "a.sqlite", postgres_url)
    second = await open_metadata(tmp_path / "b.sqlite", postgres_url)
    repositories = [f"repo{n}" for n in range(40)]
    try:
        await asyncio.gather(
            *(handle.bump_evidence(r) for r in repositories for handle in (first, second))
        )
        for handle in (first, second):
            assert [await handle.evidence_version(r) for r in repositories] == [2] * 40
    finally:
        await first.close()
        await second.close()


async def test_unlinked_blobs_are_decided_alike(db: MetadataDB) -> None:
    """What eviction frees at once: a blob no manifest references and no repository links
    (and untouched since the cutoff) is marked and deleted; a link or a reference saves it, also
    when it appears between the mark and the re-decided delete."""
    other = "sha256:" + "b" * 64
    await db.link_blob("proxied", LAYER, 7)
    await db.link_blob("proxied", other, 9)
    image = manifest("proxied", 1)
    await db.put_manifest(image, [Reference(LAYER, "blob"), Reference(other, "blob")], "v1")
    now = time.time() + 1
    assert await db.unlinked_blobs_among(now, [LAYER, other]) == {}  # linked and referenced
    assert await db.delete_manifest("proxied", image.digest)
    assert await db.unlink_blob("proxied", LAYER) and await db.unlink_blob("proxied", other)
    assert await db.unlinked_blobs_among(now, [LAYER, other, "sha256:" + "c" * 64]) == {
        LAYER: 7,
        other: 9,
    }
    await db.link_blob("local", other, 9)  # a push mounts it after the mark
    assert await db.delete_unlinked_blobs(time.time() + 1, [LAYER, other]) == [0]
    assert await db.blob_size(LAYER) is None and await db.blob_size(other) == 9
    assert await db.unlinked_blobs_among(time.time() - 3600, [other]) == {}  # seen since
