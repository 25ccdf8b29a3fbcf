"""Group commit (`storage.metadata.group_commit`) on both metadata backends: concurrent write
jobs share one commit, nothing is answered before that commit, and a job that fails takes
nothing of the others with it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from storage.metadata import (
    LibraryMoved,
    ManifestRecord,
    MetadataDB,
    MissingReferences,
    Reference,
    RepositoryChanged,
    SQLiteMetadata,
    TagMoved,
    TagPremise,
    open_metadata,
)
from storage.metadata.library import LIBRARY_GENERATION
from storage.metadata.sqlite.connection import bump_evidence, expect_evidence

MEDIA = "application/vnd.oci.image.manifest.v1+json"
LAYER = "sha256:" + "b" * 64


@pytest.fixture
async def db(tmp_path: Path, backend_url: str | None) -> AsyncIterator[MetadataDB]:
    opened = await open_metadata(tmp_path / "metadata.sqlite", backend_url)
    try:
        yield opened
    finally:
        await opened.close()


def manifest(repository: str, n: int) -> ManifestRecord:
    content = json.dumps({"schemaVersion": 2, "n": n}).encode()
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    return ManifestRecord(repository, digest, MEDIA, content)


async def test_a_failing_push_in_a_batch_commits_the_others_and_nothing_of_itself(
    db: MetadataDB,
) -> None:
    await db.link_blob("repo", LAYER, 3)
    missing = "sha256:" + "c" * 64
    records = [manifest("repo", n) for n in range(12)]

    def put(n: int) -> Any:
        refs = [Reference(missing if n == 5 else LAYER, "blob")]
        return db.put_manifest(records[n], refs, f"t{n}")

    # All submitted in one turn of the loop: they queue while the first batch runs.
    results = await asyncio.gather(*(put(n) for n in range(12)), return_exceptions=True)
    assert isinstance(results[5], MissingReferences)
    assert [ref.digest for ref in results[5].missing] == [missing]
    assert all(r == [] for n, r in enumerate(results) if n != 5)
    tags = await db.list_tags("repo", 100, None)
    assert sorted(tags) == sorted(f"t{n}" for n in range(12) if n != 5)
    assert await db.get_manifest("repo", records[5].digest) is None
    for n in range(12):
        if n != 5:
            assert await db.tag_target("repo", f"t{n}") == records[n].digest


async def test_pushes_of_a_batch_on_a_moved_tag_or_library_fail_alone(db: MetadataDB) -> None:
    """In a batch, what a push was decided on (its tag's target, the library history's
    generation) is checked before the commit without a wait of its own (on PostgreSQL the
    server compares, and a difference has the batch run again carefully): the pushes decided
    on what moved fail alone, the others commit."""
    await db.link_blob("repo", LAYER, 3)
    taken = manifest("repo", 50)
    await db.put_manifest(taken, [Reference(LAYER, "blob")], "taken")
    library = await db.generation(LIBRARY_GENERATION)
    records = [manifest("repo", 60 + n) for n in range(12)]

    def put(n: int) -> Any:
        premise = TagPremise(None)  # decided on the tag being new: "taken" is not
        generation = library + 1 if n == 7 else library  # decided on a history not there
        tag = "taken" if n == 3 else f"t{n}"
        return db.put_manifest(
            records[n],
            [Reference(LAYER, "blob")],
            tag,
            premise=premise,
            library_generation=generation,
        )

    results = await asyncio.gather(*(put(n) for n in range(12)), return_exceptions=True)
    assert isinstance(results[3], TagMoved) and results[3].found == taken.digest, results[3]
    assert isinstance(results[7], LibraryMoved), results[7]
    assert all(r == [] for n, r in enumerate(results) if n not in (3, 7))
    assert await db.tag_target("repo", "taken") == taken.digest
    for n in (3, 7):
        assert await db.get_manifest("repo", records[n].digest) is None
    for n in range(12):
        if n not in (3, 7):
            assert await db.tag_target("repo", f"t{n}") == records[n].digest


async def test_a_batch_moves_the_shared_evidence_generation_once(db: MetadataDB) -> None:
    """Each push counts in its repository's evidence version; the shared generation every
    process watches moves once per commit, not once per push of the batch."""
    repositories = [f"repo{n}" for n in range(12)]
    for repository in repositories:
        await db.link_blob(repository, LAYER, 3)
    before = await db.generation("evidence")
    refs = [Reference(LAYER, "blob")]
    await asyncio.gather(
        *(db.put_manifest(manifest(r, n), refs, "v1") for n, r in enumerate(repositories))
    )
    assert [await db.evidence_version(r) for r in repositories] == [1] * 12
    moved = await db.generation("evidence") - before
    assert 1 <= moved < 12


async def test_later_jobs_of_a_batch_see_the_earlier_ones(db: MetadataDB) -> None:
    # One tag pushed twelve times at once: it ends on the last one submitted, as twelve
    # transactions in that order would leave it.
    await db.link_blob("repo", LAYER, 3)
    records = [manifest("repo", 100 + n) for n in range(12)]
    await asyncio.gather(
        *(db.put_manifest(r, [Reference(LAYER, "blob")], "latest") for r in records)
    )
    assert await db.tag_target("repo", "latest") == records[-1].digest


async def test_a_statement_the_database_refuses_fails_its_job_alone(db: MetadataDB) -> None:
    # On PostgreSQL the batch is pipelined: the refusal is reported after later jobs were sent,
    # and the batch is run again job by job so that only the refused job fails.
    await db.start_upload("taken", "repo")

    async def clash(conn: Any) -> None:
        await conn.execute("INSERT INTO repositories (name, created_at) VALUES ('half', 0)")
        await conn.execute(
            "INSERT INTO uploads (id, repository, started_at) VALUES ('taken', 'other', 0)"
        )

    jobs = [db.start_upload(f"u{n}", "repo") for n in range(5)]
    jobs += [db.write(clash)]
    jobs += [db.start_upload(f"u{n}", "repo") for n in range(5, 10)]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert isinstance(results[5], sqlite3.IntegrityError | psycopg.IntegrityError), results[5]
    assert [r for n, r in enumerate(results) if n != 5] == [None] * 10
    for n in range(10):
        assert await db.upload_repository(f"u{n}") == "repo"
    # Nothing of the refused job stayed: neither its first statement nor its clash.
    assert not await db.repository_exists("half")
    assert await db.upload_repository("taken") == "repo"


async def test_a_job_that_raises_after_writing_fails_alone_and_leaves_nothing(
    db: MetadataDB,
) -> None:
    # On PostgreSQL a batch first runs without a savepoint per job: a job raising there has
    # the batch run again, job by job, so that its writes alone are undone.
    class Refused(Exception):
        pass

    async def half_then_raise(conn: Any) -> None:
        await conn.execute("INSERT INTO repositories (name, created_at) VALUES ('half', 0)")
        await bump_evidence(conn, "half")  # on PostgreSQL a move written at the commit
        raise Refused("decided against it after writing")

    jobs = [db.start_upload(f"u{n}", "repo") for n in range(5)]
    jobs += [db.write(half_then_raise)]
    jobs += [db.start_upload(f"u{n}", "repo") for n in range(5, 10)]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert isinstance(results[5], Refused), results[5]
    assert [r for n, r in enumerate(results) if n != 5] == [None] * 10
    for n in range(10):
        assert await db.upload_repository(f"u{n}") == "repo"
    assert not await db.repository_exists("half")
    assert await db.evidence_version("half") == 0


async def test_a_delete_decided_before_a_push_of_its_batch_is_refused(db: MetadataDB) -> None:
    # A change of the repository (as a push's) moves its evidence version first in the batch
    # (on PostgreSQL the move is written only at the commit): the delete decided on the
    # version before it must see it moved, and delete nothing.
    await db.link_blob("repo", LAYER, 3)
    old = manifest("repo", 1)
    await db.put_manifest(old, [Reference(LAYER, "blob")], None)
    decided = await db.evidence_version("repo")
    order: list[str] = []

    async def change(conn: Any) -> None:
        order.append("change")
        await bump_evidence(conn, "repo")

    async def delete(conn: Any) -> None:
        order.append("delete")
        await expect_evidence(conn, "repo", decided)
        await conn.execute("DELETE FROM manifests WHERE digest = ?", (old.digest,))

    results = await asyncio.gather(db.write(change), db.write(delete), return_exceptions=True)
    # (Run twice on PostgreSQL: a job raising has its batch run again, carefully.)
    assert order in (["change", "delete"], ["change", "delete"] * 2)
    assert results[0] is None
    assert isinstance(results[1], RepositoryChanged), results[1]
    assert await db.get_manifest("repo", old.digest) is not None
    assert await db.evidence_version("repo") == decided + 1


async def test_each_job_of_a_batch_reads_its_own_answers(db: MetadataDB) -> None:
    # The same statements, sent by every job of one batch (on PostgreSQL on cursors kept
    # for them and used again by the next job): each job reads the answer to its own.
    async def read_back(conn: Any, n: int) -> tuple[int, int, int, list[Any]]:
        # The same statement twice before either answer is read.
        first = await conn.execute("SELECT ? + 0", (n,))
        second = await conn.execute("SELECT ? + 0", (n + 1000,))
        inserted = await conn.execute(
            "INSERT INTO repositories (name, created_at) VALUES (?, 0)", (f"own{n}",)
        )
        rows = await conn.execute_fetchall(
            "SELECT name FROM repositories WHERE name = ?", (f"own{n}",)
        )
        one, two = await first.fetchone(), await second.fetchone()
        return int(one[0]), int(two[0]), inserted.rowcount, [tuple(row) for row in rows]

    results = await asyncio.gather(
        *(db.write(lambda conn, n=n: read_back(conn, n)) for n in range(16))
    )
    assert results == [(n, n + 1000, 1, [(f"own{n}",)]) for n in range(16)]


async def test_postgresql_commits_wait_for_the_disk_whatever_the_server_default(
    tmp_path: Path, postgres_url: str
) -> None:
    """PostgreSQL only (SQLite's counterpart is test_writer_commits_reach_the_disk)."""

    async def setting(conn: Any) -> str:
        row = await (await conn.execute("SHOW synchronous_commit")).fetchone()
        return str(row[0])

    db = await open_metadata(tmp_path / "metadata.sqlite", postgres_url)
    try:
        # The test cluster runs with synchronous_commit off; the writer and the pool turn it on.
        assert await db.write(setting) == "on"
        assert await db.read("SHOW synchronous_commit") == [("on",)]
    finally:
        await db.close()


async def test_concurrent_jobs_share_commits(tmp_path: Path) -> None:
    db = await SQLiteMetadata.open(tmp_path / "metadata.sqlite")
    try:
        await db.link_blob("repo", LAYER, 3)
        commits: list[str] = []
        # The writer's own statements, as SQLite runs them (sqlite3's public trace hook).
        await db._writer.set_trace_callback(
            lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None
        )
        records = [manifest("repo", 200 + n) for n in range(40)]
        refs = [Reference(LAYER, "blob")]
        await asyncio.gather(*(db.put_manifest(r, refs, f"v{i}") for i, r in enumerate(records)))
        assert len(await db.list_tags("repo", 100, None)) == 40
        assert 1 <= len(commits) < 40
    finally:
        await db.close()


async def test_a_job_that_abandons_the_transaction_fails_its_whole_batch(tmp_path: Path) -> None:
    db = await SQLiteMetadata.open(tmp_path / "metadata.sqlite")
    try:
        await db.link_blob("repo", LAYER, 3)
        records = [manifest("repo", 300 + n) for n in range(3)]

        async def abandon(conn: Any) -> None:
            await conn.execute("INSERT INTO repositories (name, created_at) VALUES ('x', 0)")
            # As SQLite does itself on a full disk: the whole transaction is rolled back.
            await conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")

        first = db.put_manifest(records[0], [Reference(LAYER, "blob")], "a")
        lost = db.write(abandon)
        last = db.put_manifest(records[1], [Reference(LAYER, "blob")], "b")
        results = await asyncio.gather(first, lost, last, return_exceptions=True)
        assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
        assert "abandoned by another write of its batch" in str(results[0])
        # Nothing of the batch was kept, and nobody was told otherwise.
        assert await db.list_tags("repo", 100, None) == []
        assert not await db.repository_exists("x")
        # The next batch works.
        await db.put_manifest(records[2], [Reference(LAYER, "blob")], "c")
        assert await db.list_tags("repo", 100, None) == ["c"]
    finally:
        await db.close()


async def test_a_job_that_awaits_anything_else_is_refused_and_rolled_back(tmp_path: Path) -> None:
    db = await SQLiteMetadata.open(tmp_path / "metadata.sqlite")
    try:

        async def sleepy(conn: Any) -> None:
            await conn.execute("INSERT INTO repositories (name, created_at) VALUES ('y', 0)")
            await asyncio.sleep(0)

        with pytest.raises(RuntimeError, match="awaited something other than its database"):
            await db.write(sleepy)
        assert not await db.repository_exists("y")
    finally:
        await db.close()


async def test_writer_commits_reach_the_disk(tmp_path: Path) -> None:
    db = await SQLiteMetadata.open(tmp_path / "metadata.sqlite")
    try:
        rows = await db._writer.execute_fetchall("PRAGMA synchronous")
        assert list(rows) == [(2,)]  # FULL: the WAL is synced at every commit
    finally:
        await db.close()


async def test_the_postgresql_writer_keeps_cursors_for_a_bounded_number_of_statements(
    tmp_path: Path, postgres_url: str
) -> None:
    # Statements made of a variable list of placeholders are as many statements as lengths:
    # the cursors kept for their next use stay bounded whatever comes.
    from storage.metadata.postgresql.writer import KEPT_STATEMENTS

    db = await open_metadata(tmp_path / "metadata.sqlite", postgres_url)
    try:

        async def varied(conn: Any, n: int) -> int:
            marks = ", ".join("?" * n)
            rows = await conn.execute_fetchall(
                f"SELECT count(*) FROM (VALUES ({marks})) v", [n] * n
            )
            return int(rows[0][0])

        counts = await asyncio.gather(
            *(db.write(lambda conn, n=n: varied(conn, n)) for n in range(1, KEPT_STATEMENTS + 40))
        )
        assert counts == [1] * (KEPT_STATEMENTS + 39)
        kept = db._writer._cursors._free  # type: ignore[attr-defined]
        assert 0 < len(kept) <= KEPT_STATEMENTS
    finally:
        await db.close()
