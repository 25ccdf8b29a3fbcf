"""A decision-log write that fails (the disk full for a moment, the database briefly unusable)
neither stops the background flusher nor loses the decisions it was writing: the allowed pulls
folded before the failure and every one after reach the durable log on their own.

An attacker who can fill the disk once (a large push refused with 507) must not thereby switch
off the record of what is pulled from then on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from policies.gateway import FLUSH_INTERVAL
from registry.context import CONTEXT
from storage.errors import StorageFull
from storage.metadata import DecisionRecord, MetadataDB
from tests.oci import push_image
from tests.signing import pull

#: Only another repository is refused: pulls of dev/app are allowed, folded and flushed.
POLICY = """\
version: 1
rules:
  - name: nothing out of old
    match: {repositories: ["old/**"], on: [pull]}
    deny: frozen
"""


async def logged_pulls(db: MetadataDB, repository: str, count: int) -> list[DecisionRecord]:
    """The pull rows of `repository` once they hold `count` pulls (waiting, with a timeout)."""
    deadline = time.monotonic() + 20 * FLUSH_INTERVAL
    while True:
        rows = await db.list_decisions(repository=repository, action="pull")
        if sum(r.repeats for r in rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(FLUSH_INTERVAL / 10)


async def test_one_failed_write_stops_neither_the_flusher_nor_loses_its_decisions(
    start_client: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    await push_image(client, "dev/app", "v1")
    db = client.server.app[CONTEXT].db
    write = db.record_decisions
    failed = asyncio.Event()

    async def full_once(rows: list[DecisionRecord]) -> None:
        """The metadata disk is full for the first write after the push, then has room."""
        if not failed.is_set():
            failed.set()
            raise StorageFull("disk (metadata database)")
        await write(rows)

    monkeypatch.setattr(db, "record_decisions", full_once)
    assert await pull(client, "dev/app", "v1") == (200, "")
    await asyncio.wait_for(failed.wait(), 20 * FLUSH_INTERVAL)  # the flusher's write failed
    assert await pull(client, "dev/app", "v1") == (200, "")

    rows = await logged_pulls(db, "dev/app", 2)
    assert {(r.action, r.repository, r.reference, r.outcome) for r in rows} == {
        ("pull", "dev/app", "v1", "allow")
    }
    # The pull whose write failed, and the one after: one row, or two when the flusher's next
    # tick came between the failure and the second pull (a slow machine).
    assert sum(r.repeats for r in rows) == 2


async def test_a_refusal_whose_write_fails_is_still_refused(
    start_client: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """A denial is written at once, in the request: when that write fails the pull is still
    refused (507, the disk is full), never let through unrecorded."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    await push_image(client, "old/app", "v1")
    db = client.server.app[CONTEXT].db

    async def full(rows: list[DecisionRecord]) -> None:
        raise StorageFull("disk (metadata database)")

    monkeypatch.setattr(db, "record_decisions", full)
    resp = await client.get("/v2/old/app/manifests/v1")
    assert resp.status == 507
    body = await resp.json()
    assert [e["code"] for e in body["errors"]] == ["STORAGE_FULL"]
