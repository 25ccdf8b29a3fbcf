"""Stopping the server while the background flusher is writing the decision log loses nothing:
the write cut short keeps its decisions, and `close` writes them before it returns (after it,
the metadata database is closed and anything still folded would be gone).

The attacker pulls just before a restart (an upgrade, a crash loop they can provoke), hoping the
pull is in a write that the shutdown cancels."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from policies.gateway import FLUSH_INTERVAL
from registry.context import CONTEXT
from storage.metadata import DecisionRecord
from tests.oci import push_image
from tests.signing import pull

POLICY = """\
version: 1
rules:
  - name: nothing out of old
    match: {repositories: ["old/**"], on: [pull]}
    deny: frozen
"""


async def test_a_flush_cut_short_by_shutdown_is_written_before_close_returns(
    start_client: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    await push_image(client, "dev/app", "v1")
    context = client.server.app[CONTEXT]
    db, gate = context.db, context.policy
    write = db.record_decisions
    writing = asyncio.Event()
    hung: list[list[DecisionRecord]] = []

    async def slow_first_write(rows: list[DecisionRecord]) -> None:
        """The flusher's first write after the pull hangs (a slow disk) until it is cancelled."""
        if not hung:
            hung.append(rows)
            writing.set()
            await asyncio.Event().wait()
        await write(rows)

    monkeypatch.setattr(db, "record_decisions", slow_first_write)
    assert await pull(client, "dev/app", "v1") == (200, "")
    await asyncio.wait_for(writing.wait(), 20 * FLUSH_INTERVAL)  # the flusher is writing it
    assert [(r.repository, r.reference, r.outcome) for r in hung[0]] == [("dev/app", "v1", "allow")]

    await gate.close()
    rows = await db.list_decisions(repository="dev/app", action="pull")
    assert [(r.reference, r.outcome, r.repeats) for r in rows] == [("v1", "allow", 1)]
