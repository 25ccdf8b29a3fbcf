"""Garbage collection's marks and deletions, its runs, in SQLite (`storage.metadata.housekeeping`).

The rules are the SQL of `storage.gc_rules`, written once: the mark, the re-decided `DELETE` and
the dry run's simulation all read the same text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from storage import gc_rules
from storage.metadata.housekeeping import GCRun, Simulation
from storage.metadata.sqlite.connection import SQLiteBase, bump_evidence


class SQLiteHousekeeping(SQLiteBase):
    """`Housekeeping` on SQLite."""

    async def collectable_manifests(
        self, cutoff: float, after: tuple[str, str], limit: int
    ) -> list[tuple[str, str]]:
        """(repository, digest) of collectable manifests in key order after `after`."""
        rows = await self._all(
            gc_rules.MARK_MANIFESTS,
            {"cutoff": cutoff, "repository": after[0], "digest": after[1], "limit": limit},
        )
        return [(row[0], row[1]) for row in rows]

    async def delete_manifests_if_collectable(
        self, cutoff: float, manifests: Sequence[tuple[str, str]]
    ) -> list[int]:
        """Delete each manifest still collectable; the positions of those deleted."""
        rows = [{"cutoff": cutoff, "repository": r, "digest": d} for r, d in manifests]
        return await self._delete_each(gc_rules.DELETE_MANIFEST, rows, evidence=True)

    async def collectable_blobs(
        self, cutoff: float, after: str, limit: int
    ) -> list[tuple[str, int]]:
        """(digest, size) of collectable blobs in digest order after `after`."""
        rows = await self._all(
            gc_rules.MARK_BLOBS, {"cutoff": cutoff, "digest": after, "limit": limit}
        )
        return [(row[0], int(row[1])) for row in rows]

    async def delete_blobs_if_collectable(self, cutoff: float, digests: Sequence[str]) -> list[int]:
        """Delete the record of each blob still collectable; the positions of those deleted."""
        rows = [{"cutoff": cutoff, "digest": digest} for digest in digests]
        return await self._delete_each(gc_rules.DELETE_BLOB, rows)

    async def unlinked_blobs_among(self, cutoff: float, digests: Sequence[str]) -> dict[str, int]:
        """The sizes of those of `digests` collectable by `cutoff` and linked nowhere."""
        found: dict[str, int] = {}
        for first in range(0, len(digests), 500):
            page = digests[first : first + 500]
            params: dict[str, Any] = {f"d{i}": d for i, d in enumerate(page)}
            params["cutoff"] = cutoff
            for row in await self._all(gc_rules.mark_unlinked_blobs(len(page)), params):
                found[row[0]] = int(row[1])
        return found

    async def delete_unlinked_blobs(self, cutoff: float, digests: Sequence[str]) -> list[int]:
        """Delete the record of each blob still collectable and linked nowhere; the positions
        of those deleted."""
        rows = [{"cutoff": cutoff, "digest": digest} for digest in digests]
        return await self._delete_each(gc_rules.DELETE_UNLINKED_BLOB, rows)

    async def delete_uploads_if_stale(self, cutoff: float, upload_ids: Sequence[str]) -> list[int]:
        """Forget each upload session still stale; the positions of those forgotten."""
        rows = [{"id": upload_id, "cutoff": cutoff} for upload_id in upload_ids]
        return await self._delete_each(gc_rules.DELETE_UPLOAD, rows)

    async def _delete_each(
        self, sql: str, rows: Sequence[Mapping[str, Any]], *, evidence: bool = False
    ) -> list[int]:
        """Run the `DELETE` statement `sql` once per row of parameters, all in one write
        transaction; the positions of the rows it deleted something for. With `evidence`, the
        repository (`:repository`) of each deletion has its evidence version bumped."""
        deleted: list[int] = []
        async with self.transaction() as db:
            for position, row in enumerate(rows):
                cursor = await db.execute(sql, row)
                if cursor.rowcount > 0:
                    deleted.append(position)
                    if evidence:
                        await bump_evidence(db, row["repository"])
        return deleted

    async def simulate_collection(
        self, cutoff: float, upload_cutoff: float, *, delete_untagged: bool
    ) -> Simulation:
        """What a collection would delete now, cascade included, in one read snapshot."""
        found = Simulation()
        async with self.snapshot() as conn:
            await conn.execute(gc_rules.SIMULATION_TABLE)
            while delete_untagged:
                cursor = await conn.execute(gc_rules.SIMULATE_MANIFESTS, {"cutoff": cutoff})
                if cursor.rowcount <= 0:
                    break
            async with conn.execute("SELECT repository, digest FROM temp.gc_gone") as cursor:
                found.manifests = [(row[0], row[1]) async for row in cursor]
            async with conn.execute(gc_rules.SIMULATE_BLOBS, {"cutoff": cutoff}) as cursor:
                found.blobs = [(row[0], int(row[1])) async for row in cursor]
            async with conn.execute(
                "SELECT id FROM uploads WHERE started_at < ?", (upload_cutoff,)
            ) as cursor:
                found.uploads = [row[0] async for row in cursor]
        return found

    async def record_gc_run(self, started: float, finished: float, summary: dict[str, int]) -> None:
        """Remember a garbage collection."""
        async with self.transaction() as conn:
            await conn.execute(
                "INSERT INTO gc_runs (started_at, finished_at, summary) VALUES (?, ?, ?)",
                (started, finished, json.dumps(summary)),
            )

    async def gc_run_totals(self) -> tuple[int, float]:
        """How many garbage collections ran, and when the last one ended (0: never)."""
        rows = await self._all("SELECT count(*), max(finished_at) FROM gc_runs")
        return (int(rows[0][0]), float(rows[0][1] or 0.0)) if rows else (0, 0.0)

    async def last_gc_run(self) -> GCRun | None:
        """The latest garbage collection, or None if none ran."""
        row = await self._one(
            "SELECT started_at, finished_at, summary FROM gc_runs ORDER BY id DESC LIMIT 1"
        )
        return None if row is None else GCRun(float(row[0]), float(row[1]), json.loads(row[2]))
