"""`trustyard migrate`: a registry's metadata moves from its SQLite file into a real PostgreSQL
without losing a row (counts per table and a sample of digests equal after the move), the copy
refuses a target that already holds a registry, and ids continue after the copied ones."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from storage.metadata import (
    DecisionRecord,
    FollowLibraryTag,
    ManifestRecord,
    OutboxRow,
    ProofRow,
    Reference,
    open_metadata,
)
from storage.metadata.postgresql.copy import TABLES
from storage.metadata.postgresql.upgrade import upgrade_postgresql
from storage.metadata.sqlite.upgrade import UpgradeRefused, upgrade_sqlite

ROOT = Path(__file__).resolve().parents[2]
MEDIA = "application/vnd.oci.image.manifest.v1+json"
PROOFS = [
    ProofRow("sha256:" + c * 64, signer, valid, {"kind": "cosign"}, "t1", 5.0)
    for c, signer, valid in (("f", "zeta", True), ("0", "alpha", False), ("8", None, False))
]


def trustyard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registry", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def populate(database: Path, repositories: int = 6, per_repository: int = 7) -> list[str]:
    """A registry with rows in most tables; the manifest digests."""
    db = await open_metadata(database)
    digests = []
    try:
        now = time.time()
        for r in range(repositories):
            repo = f"team{r}/app"
            layer = "sha256:" + hashlib.sha256(f"layer{r}".encode()).hexdigest()
            await db.link_blob(repo, layer, 1000 + r)
            for n in range(per_repository):
                content = json.dumps({"schemaVersion": 2, "r": r, "n": n}).encode()
                digest = "sha256:" + hashlib.sha256(content).hexdigest()
                record = ManifestRecord(repo, digest, MEDIA, content, annotations={"n": str(n)})
                follow = [FollowLibraryTag("app", f"v{n}", repo, digest)] if r == 0 else []
                await db.put_manifest(
                    record,
                    [Reference(layer, "blob")],
                    f"v{n}",
                    [OutboxRow("hook", repo, "push", b'{"n": %d}' % n, now)],
                    follow,
                )
                digests.append(digest)
            await db.start_upload(f"{r:032x}", repo)
        await db.record_decisions(
            DecisionRecord(
                now - i,
                "alice",
                "push",
                "team0/app",
                "v1",
                digests[0],
                "allow",
                None,
                "allowed",
                "p1",
            )
            for i in range(25)
        )
        await db.record_gc_run(now - 10, now - 5, {"manifests": 1, "blobs": 2})
        # Proofs are read back in the order they were recorded (SQLite's rowid).
        await db.replace_signature_proofs("team0/app", digests[0], PROOFS)
    finally:
        await db.close()
    return digests


async def test_migrate_moves_every_row_and_ids_continue(tmp_path: Path, postgres_url: str) -> None:
    source = tmp_path / "metadata.sqlite"
    digests = await populate(source)

    moved = trustyard("migrate", "--from", str(source), "--to", postgres_url)
    assert moved.returncode == 0, moved.stderr

    with sqlite3.connect(source) as lite:
        expected = {t: lite.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    connection = await asyncpg.connect(postgres_url)
    try:
        copied = {t: await connection.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
    finally:
        await connection.close()
    assert copied == expected
    assert expected["manifests"] == 42 and expected["policy_decisions"] == 25
    assert all(f"{t}: {n} rows" in moved.stdout for t, n in expected.items())

    db = await open_metadata(tmp_path / "unused.sqlite", postgres_url)
    try:
        for digest in digests[::5]:
            repo = (await db.repositories_holding(digest))[0]
            record = await db.get_manifest(repo, digest)
            assert record is not None
            assert "sha256:" + hashlib.sha256(record.content).hexdigest() == digest
            assert record.annotations is not None
        assert await db.tag_target("team3/app", "v4") == digests[3 * 7 + 4]
        assert [h.digest for h in await db.library_tag_history("app", "v2")] == [digests[2]]
        assert await db.signature_proofs("team0/app", digests[0]) == PROOFS
        before = await db.list_decisions(limit=1)
        await db.record_decisions(
            [
                DecisionRecord(
                    time.time(),
                    "bob",
                    "pull",
                    "team1/app",
                    "v1",
                    digests[7],
                    "deny",
                    "r",
                    "denied",
                    "p1",
                )
            ]
        )
        after = await db.list_decisions(limit=1)
        assert after[0].id == before[0].id + 1 and after[0].identity == "bob"
        assert not (tmp_path / "unused.sqlite").exists()
    finally:
        await db.close()


async def test_migrate_refuses_a_target_that_holds_a_registry(
    tmp_path: Path, postgres_url: str
) -> None:
    source = tmp_path / "metadata.sqlite"
    await populate(source, repositories=1, per_repository=1)
    assert trustyard("migrate", "--from", str(source), "--to", postgres_url).returncode == 0
    again = trustyard("migrate", "--from", str(source), "--to", postgres_url)
    assert again.returncode == 2
    assert "already holds Trustyard rows (repositories): copy into an empty database" in (
        again.stderr
    )
    assert "Traceback" not in again.stderr


def run_with(metadata: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registry", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "TRUSTYARD_METADATA": metadata},
        check=False,
    )


def test_an_unreachable_postgresql_is_one_line_naming_it(tmp_path: Path) -> None:
    """Nothing listens on the socket folder: serve, gc and migrate say so in one line, without
    the password."""
    url = f"postgresql://nobody:secret@/trustyard?host={tmp_path}"
    data = str(tmp_path / "data")
    for args in (
        ("serve", "--listen", "127.0.0.1:0", "--data-dir", data),
        ("migrate", "--data-dir", data),
    ):
        result = run_with(url, *args)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if "trustyard:" in line]
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(
            "trustyard: the metadata database cannot be used: PostgreSQL at "
            f"postgresql://nobody:***@/trustyard?host={tmp_path} is unreachable"
        ), lines[0]
        assert "secret" not in lines[0]


def test_a_refusing_postgresql_and_a_wrong_url_are_one_line(
    tmp_path: Path, postgres_url: str
) -> None:
    missing = postgres_url.replace("/t_", "/absent_")
    result = run_with(missing, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "trustyard:" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "refused:" in lines[0] and 'database "absent_' in lines[0], lines[0]
    wrong = run_with("mysql://x/y", "migrate", "--data-dir", str(tmp_path))
    assert wrong.returncode == 2
    assert "metadata" in wrong.stderr and "postgresql://" in wrong.stderr, wrong.stderr
    assert "Traceback" not in wrong.stderr


async def schema_of(db_path: Path, url: str | None) -> tuple[int, list[str]]:
    """(recorded version, notes of gc_runs) read through the backend's own driver."""
    if url is None:
        with sqlite3.connect(db_path) as lite:
            version = lite.execute("SELECT version FROM schema_version").fetchone()[0]
            notes = [r[0] for r in lite.execute("SELECT note FROM gc_runs ORDER BY id")]
        return version, notes
    connection = await asyncpg.connect(url)
    try:
        version = await connection.fetchval("SELECT version FROM schema_version")
        notes = [r[0] for r in await connection.fetch("SELECT note FROM gc_runs ORDER BY id")]
    finally:
        await connection.close()
    return version, notes


async def test_versioned_upgrades_apply_in_order_and_a_failing_one_leaves_the_version(
    tmp_path: Path, backend_url: str | None
) -> None:
    """Version 2 adds a column and fills it; version 3 fails half-way and is rolled back whole:
    the database stays at version 2 with none of version 3's statements applied."""
    database = tmp_path / "metadata.sqlite"
    db = await open_metadata(database, backend_url)
    await db.record_gc_run(1.0, 2.0, {"blobs": 1})
    await db.close()
    steps = {
        2: ["ALTER TABLE gc_runs ADD COLUMN note TEXT", "UPDATE gc_runs SET note = 'before 2'"],
        3: ["UPDATE gc_runs SET note = 'half of 3'", "ALTER TABLE no_such_table ADD COLUMN x"],
    }

    async def upgrade(target: int) -> tuple[int | None, int | None]:
        if backend_url is None:
            return upgrade_sqlite(database, steps, target)
        return await upgrade_postgresql(backend_url, steps, target)

    assert await upgrade(2) == (1, 2)
    assert await schema_of(database, backend_url) == (2, ["before 2"])
    assert await upgrade(2) == (2, 2)
    with pytest.raises((sqlite3.OperationalError, asyncpg.PostgresError)):
        await upgrade(3)
    assert await schema_of(database, backend_url) == (2, ["before 2"])
    with pytest.raises(UpgradeRefused, match="schema version 2, newer than this Trustyard's 1"):
        await upgrade(1)


def test_migrate_reports_the_schema_of_the_configured_database(
    tmp_path: Path, postgres_url: str
) -> None:
    data = str(tmp_path / "data")
    first = run_with(postgres_url, "migrate", "--data-dir", data)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith("schema version 1 (created)")
    assert "@/t_" in first.stdout or "/t_" in first.stdout
    again = run_with(postgres_url, "migrate", "--data-dir", data)
    assert again.stdout.strip().endswith("schema version 1 (up to date)")
    lite = run_with("sqlite", "migrate", "--data-dir", data)
    assert lite.returncode == 0, lite.stderr
    assert lite.stdout.strip() == f"{data}/metadata.sqlite: schema version 1 (created)"


def test_backup_refuses_a_postgresql_registry(tmp_path: Path, postgres_url: str) -> None:
    """`backup` copies the SQLite file: on PostgreSQL it would hold no metadata, so it refuses."""
    data = tmp_path / "data"
    assert run_with(postgres_url, "migrate", "--data-dir", str(data)).returncode == 0
    data.mkdir(exist_ok=True)
    result = run_with(postgres_url, "backup", str(tmp_path / "copy"), "--data-dir", str(data))
    assert result.returncode == 2, result.stderr
    assert "the metadata database is PostgreSQL" in result.stderr
    assert "pg_dump" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "copy").exists()
