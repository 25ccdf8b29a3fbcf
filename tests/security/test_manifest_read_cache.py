"""Manifests served from memory (storage/metadata/sqlite/read_cache.py) never outlive a commit:
a tag moved, a manifest or tag deleted by this process, another worker (another connection to
the same file), another program writing the file, is read afresh by the next request; when the
change counter cannot be read nothing is served from memory; memory stays bounded."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.metadata import ManifestRecord, open_metadata
from storage.metadata.sqlite import SQLiteMetadata
from storage.metadata.sqlite.read_cache import CommitProbe, ManifestReads
from tests.registry.test_workers import (
    WORKER,
    push_image,
    request,
    wait_until,
    workers_answering,
)
from tests.server_process import start_registry

REPO = "team/app"
MEDIA = "application/vnd.oci.image.manifest.v1+json"

#: The read cache is SQLite's (PostgreSQL gives no commit signal before the next request).
pytestmark = pytest.mark.sqlite_only


def manifest(n: int, size: int = 0) -> ManifestRecord:
    content = json.dumps({"schemaVersion": 2, "n": n, "pad": "x" * size}).encode()
    return ManifestRecord(REPO, "sha256:" + hashlib.sha256(content).hexdigest(), MEDIA, content)


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[SQLiteMetadata, SQLiteMetadata]]:
    """Two metadata stores on one file: two workers of `serve --workers 2`, as SQLite sees them."""
    first = await open_metadata(tmp_path / "metadata.sqlite", None)
    second = await open_metadata(tmp_path / "metadata.sqlite", None)
    assert isinstance(first, SQLiteMetadata) and isinstance(second, SQLiteMetadata)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def tagged(db: SQLiteMetadata, tag: str) -> str | None:
    """The digest `tag` points at as `db` answers, or None."""
    record = await db.get_tagged_manifest(REPO, tag)
    return None if record is None else record.digest


async def by_digest(db: SQLiteMetadata, digest: str) -> bytes | None:
    record = await db.get_manifest(REPO, digest)
    return None if record is None else record.content


async def cached(db: SQLiteMetadata, tag: str, record: ManifestRecord) -> None:
    """Read `tag` until the answer came from memory (proof the cache holds it)."""
    assert db.manifest_reads is not None
    assert await tagged(db, tag) == record.digest
    assert await by_digest(db, record.digest) == record.content
    hits = db.manifest_reads.hits
    assert await tagged(db, tag) == record.digest
    assert await by_digest(db, record.digest) == record.content
    assert db.manifest_reads.hits == hits + 2


async def test_a_tag_moved_by_another_worker_is_read_afresh(two) -> None:
    reader, writer = two
    v1, v2 = manifest(1), manifest(2)
    await writer.put_manifest(v1, [], "latest")
    await cached(reader, "latest", v1)
    await writer.put_manifest(v2, [], "latest")
    assert await tagged(reader, "latest") == v2.digest
    await cached(reader, "latest", v2)


async def test_a_tag_moved_by_the_same_process_is_read_afresh(two) -> None:
    db, _ = two
    v1, v2 = manifest(1), manifest(2)
    await db.put_manifest(v1, [], "latest")
    await cached(db, "latest", v1)
    await db.put_manifest(v2, [], "latest")
    assert await tagged(db, "latest") == v2.digest


async def test_a_manifest_deleted_by_another_worker_is_not_served(two) -> None:
    reader, writer = two
    v1 = manifest(1)
    await writer.put_manifest(v1, [], "latest")
    await cached(reader, "latest", v1)
    assert await writer.delete_manifest(REPO, v1.digest)
    assert await reader.get_manifest(REPO, v1.digest) is None
    assert await tagged(reader, "latest") is None


async def test_a_tag_deleted_by_another_worker_is_not_served(two) -> None:
    reader, writer = two
    v1 = manifest(1)
    await writer.put_manifest(v1, [], "latest")
    await cached(reader, "latest", v1)
    assert await writer.delete_tag(REPO, "latest")
    assert await tagged(reader, "latest") is None
    assert await by_digest(reader, v1.digest) == v1.content  # the manifest itself stays


async def test_a_commit_by_another_program_is_seen(two, tmp_path: Path) -> None:
    """Not only Trustyard's writes: any process that commits to the file (here a plain sqlite3
    script pointing the tag elsewhere by hand)."""
    reader, writer = two
    v1, v2 = manifest(1), manifest(2)
    await writer.put_manifest(v1, [], "latest")
    await writer.put_manifest(v2, [], "other")
    await cached(reader, "latest", v1)
    script = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "c.execute('UPDATE tags SET digest = ? WHERE repository = ? AND name = ?', "
        "(sys.argv[2], sys.argv[3], 'latest'))\n"
        "c.commit()\n"
    )
    database = str(tmp_path / "metadata.sqlite")
    subprocess.run([sys.executable, "-c", script, database, v2.digest, REPO], check=True)
    assert await tagged(reader, "latest") == v2.digest


async def test_nothing_is_served_from_memory_when_the_counter_cannot_be_read(two) -> None:
    db, _ = two
    v1 = manifest(1)
    await db.put_manifest(v1, [], "latest")
    await cached(db, "latest", v1)
    assert db.manifest_reads is not None
    db.manifest_reads.probe._connection.close()  # every look now fails: "cannot tell"
    hits = db.manifest_reads.hits
    for _ in range(3):
        assert await tagged(db, "latest") == v1.digest
    assert db.manifest_reads.hits == hits


def test_memory_is_bounded_and_large_manifests_are_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    sqlite3.connect(path).execute("PRAGMA journal_mode = WAL").close()
    probe = CommitProbe(path)
    reads = ManifestReads(probe, max_bytes=64 * 1024)
    try:
        _, version = reads.lookup((REPO, "tag", "t0"))
        records = [manifest(n, size=3000) for n in range(40)]
        for n, record in enumerate(records):
            reads.remember((REPO, "tag", f"t{n}"), record, version)
        assert reads._bytes <= 64 * 1024
        assert sum(r.size for r in reads._entries.values()) == reads._bytes
        assert reads.lookup((REPO, "tag", "t0"))[0] is None  # the oldest went first
        assert reads.lookup((REPO, "tag", "t39"))[0] == records[39]
        big = manifest(99, size=64 * 1024 // 16)
        reads.remember((REPO, "tag", "big"), big, version)
        assert reads.lookup((REPO, "tag", "big"))[0] is None
        # A version that moved meanwhile: what was read under the old one is not kept.
        reads.remember((REPO, "tag", "late"), records[0], version - 1)
        assert reads.lookup((REPO, "tag", "late"))[0] is None
    finally:
        probe.close()


HITS = re.compile(r"^trustyard_manifest_reads_from_memory_total (\d+)$", re.MULTILINE)


def reads_from_memory(url: str) -> dict[int, int]:
    """Manifest reads each worker answered from memory, as its `/metrics` says (48 fresh
    connections: the kernel spreads them over both)."""
    seen: dict[int, int] = {}
    for _ in range(48):
        status, body = request(f"{url}/metrics")
        assert status == 200
        text = body.decode()
        worker, hits = WORKER.search(text), HITS.search(text)
        assert worker is not None and hits is not None, text[-500:]
        seen[int(worker.group(1))] = max(seen.get(int(worker.group(1)), 0), int(hits.group(1)))
    return seen


def test_a_tag_moved_through_one_worker_is_pulled_new_from_every_worker(tmp_path: Path) -> None:
    """Over HTTP with `serve --workers 2`: after the 201 of a push that moves a tag (or the 202
    of a delete), every GET on a fresh connection, whichever worker the kernel gives it to,
    answers the new state, though both workers had been serving the old one from memory."""
    server = start_registry(tmp_path / "data", extra_args=["--workers", "2"])
    try:
        wait_until(lambda: workers_answering(server.url) == {0, 1}, "both workers answering")
        accept = {"Accept": MEDIA}
        bodies = {}
        for tag in ("a", "b"):
            digest = push_image(server.url, REPO, tag)
            status, bodies[digest] = request(
                f"{server.url}/v2/{REPO}/manifests/{tag}", headers=accept
            )
            assert status == 200
        url = f"{server.url}/v2/{REPO}/manifests/latest"
        before: dict[int, int] = {}
        for digest in [*bodies, *bodies]:
            status, _ = request(url, "PUT", data=bodies[digest], headers={"Content-Type": MEDIA})
            assert status == 201
            for _ in range(24):  # each on a fresh connection: both workers answer
                status, body = request(url, headers=accept)
                assert status == 200
                assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
            # Both workers were answering this state from memory when the next change came.
            hits = reads_from_memory(server.url)
            assert set(hits) == {0, 1}, hits
            assert all(hits[w] > before.get(w, 0) for w in hits), (before, hits)
            before = hits
        status, _ = request(f"{server.url}/v2/{REPO}/manifests/{digest}", "DELETE")
        assert status == 202
        for _ in range(24):
            status, _ = request(url, headers=accept)
            assert status == 404
    finally:
        server.stop()
