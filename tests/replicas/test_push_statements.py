"""What one manifest push costs the PostgreSQL server, counted by the server itself: one commit
(the manifest, its tag, its decision row, its events and its lineage together, never a second
write for the lineage), no statement on a lock connection (the tag is re-checked inside the
push's own transaction), no read before the decision (the immutability rule's tag is assumed
new and the library history is the one the process last read: the store checks both), and a
bounded number of statements in all.

Every statement of the registry's sessions is logged (`log_statement = all`, set on the test's
own database only) and read back from the server's log, by the backends of that database.
Pushes go one after the other, so each is its own group commit.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.oci import OCI_MANIFEST
from tests.postgres_server import PostgresServer
from tests.replicas.conftest import StartReplicas
from tests.replicas.images import IMMUTABLE_RELEASES, image_manifest

PUSHES = 12
#: Statements per push, all sessions of the registry included (the write, and what runs
#: meanwhile in the background: the outbox's poll). A push cost 26 when its tag lock took three
#: round trips on a connection of its own and its lineage a second commit, 18 when its
#: immutability rule read the tag and its lineage trace the whole library history before every
#: push, 16 when each process read the evidence generation at each commit's notice (the notice
#: now carries it) and each push created its repository's row (its blobs' rows prove it).
MAX_STATEMENTS = 15

#: A logged statement: `<time> [<pid>] LOG:  statement: ...` or `... LOG:  execute <name>: ...`.
_LOGGED = re.compile(r"\[(\d+)\] LOG:  (?:statement|execute [^:]*): (.*)")


@pytest.mark.parametrize("metadata_url", ["postgresql"], indirect=True)
async def test_a_push_costs_one_commit_and_no_lock_round_trip(
    start_replicas: StartReplicas,
    metadata_url: str,
    postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    database = metadata_url.split("@/", 1)[1].split("?", 1)[0]
    admin = await asyncpg.connect(metadata_url)
    try:
        await admin.execute(f"ALTER DATABASE \"{database}\" SET log_statement = 'all'")
    finally:
        await admin.close()
    policy = tmp_path / "policy.yaml"
    policy.write_text(IMMUTABLE_RELEASES)
    replica = start_replicas("--policy", str(policy), count=1).a
    log = postgres.root / "server.log"
    async with aiohttp.ClientSession(base_url=replica.url) as client:
        bodies = [await image_manifest(client, "team/counted", n, "counted") for n in range(PUSHES)]
        start = log.stat().st_size
        for n, body in enumerate(bodies):
            async with client.put(
                f"/v2/team/counted/manifests/v{n}",
                data=body,
                headers={"Content-Type": OCI_MANIFEST},
            ) as resp:
                assert resp.status == 201, await resp.text()
        # The registry's sessions, while they are all still open.
        watcher = await asyncpg.connect(metadata_url)
        try:
            rows = await watcher.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        finally:
            await watcher.close()
    ours = {str(row["pid"]) for row in rows}
    statements = [
        (match[1], match[2])
        for line in log.read_text(errors="replace")[start:].splitlines()
        if (match := _LOGGED.search(line)) and match[1] in ours
    ]
    by_backend = Counter(pid for pid, _ in statements)
    [writer] = {pid for pid, text in statements if text.startswith("INSERT INTO manifests ")}
    commits = [text for pid, text in statements if pid == writer and text.startswith("COMMIT")]
    assert len(commits) == PUSHES, by_backend
    lineage = [
        t for p, t in statements if p == writer and t.startswith("INSERT INTO images_without")
    ]
    assert len(lineage) == PUSHES  # written in the push's commit, by the same writer
    locks = [text for _, text in statements if "advisory_lock(" in text and "xact" not in text]
    assert locks == []
    # Nothing read before the decisions: the tag is checked in the write's own statement, and
    # the library history was read once (at the first push) for all of them.
    tag_reads = [t for _, t in statements if t.startswith("SELECT digest FROM tags ")]
    assert tag_reads == []
    history_reads = [t for _, t in statements if "library_tag_history" in t]
    assert len(history_reads) <= 1, history_reads
    assert len(statements) <= MAX_STATEMENTS * PUSHES, Counter(text for _, text in statements)
