"""Blobs and upload sessions in SQLite (`storage.metadata.blobs`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import aiosqlite

from storage.metadata.sqlite.connection import (
    SQLiteBase,
    ensure_repository,
    expect_evidence,
    fetch_one,
)

#: The size of a blob a repository links.
_LINKED_BLOB_SIZE = (
    "SELECT b.size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest "
    "WHERE rb.repository = ? AND rb.digest = ?"
)
#: Digests per `IN (...)` list: well under SQLite's limit on parameters.
_CHUNK = 500


class SQLiteBlobs(SQLiteBase):
    """`BlobsAndUploads` on SQLite."""

    async def blob_in_repository(self, repository: str, digest: str) -> int | None:
        """The size of a blob the repository links, or None."""
        row = await self._one(_LINKED_BLOB_SIZE, (repository, digest))
        return None if row is None else int(row[0])

    async def blob_size(self, digest: str) -> int | None:
        """The size of a committed blob, whichever repository links it, or None."""
        row = await self._one("SELECT size FROM blobs WHERE digest = ?", (digest,))
        return None if row is None else int(row[0])

    async def blob_sizes(self, digests: Sequence[str]) -> dict[str, int]:
        """The sizes of the committed blobs among `digests`."""
        found: dict[str, int] = {}
        for start in range(0, len(digests), _CHUNK):
            chunk = list(digests[start : start + _CHUNK])
            marks = ", ".join("?" * len(chunk))
            for row in await self._all(
                f"SELECT digest, size FROM blobs WHERE digest IN ({marks})", chunk
            ):
                found[row[0]] = int(row[1])
        return found

    async def known_among(self, digests: Sequence[str]) -> set[str]:
        """Which of `digests` the database records as blobs."""
        if not digests:
            return set()
        marks = ", ".join("?" * len(digests))
        rows = await self._all(f"SELECT digest FROM blobs WHERE digest IN ({marks})", digests)
        return {row[0] for row in rows}

    async def blob_count(self) -> int:
        """How many blobs are recorded."""
        return int((await self._all("SELECT COUNT(*) FROM blobs"))[0][0])

    async def blobs_after(self, after: str, limit: int) -> list[tuple[str, int]]:
        """(digest, size) of recorded blobs in digest order after `after`."""
        rows = await self._all(
            "SELECT digest, size FROM blobs WHERE digest > ? ORDER BY digest LIMIT ?",
            (after, limit),
        )
        return [(row[0], int(row[1])) for row in rows]

    async def link_blob(self, repository: str, digest: str, size: int) -> None:
        """Record a committed blob and link it into a repository."""
        now = time.time()

        async def link(db: Any) -> None:
            await db.execute(
                "INSERT INTO blobs (digest, size, created_at, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (digest) DO UPDATE SET last_seen = excluded.last_seen",
                (digest, size, now, now),
            )
            await _link_blob(db, repository, digest, now)

        # Write jobs: committed together with the other pushes of the moment (group commit).
        await self.write(link)

    async def mount_blob(self, repository: str, source: str, digest: str) -> int | None:
        """Link a blob that `source` links into `repository`; its size, or None if not there."""
        now = time.time()
        async with self.transaction() as db:
            row = await fetch_one(db, _LINKED_BLOB_SIZE, (source, digest))
            if row is None:
                return None
            await db.execute("UPDATE blobs SET last_seen = ? WHERE digest = ?", (now, digest))
            await _link_blob(db, repository, digest, now)
            return int(row[0])

    async def unlink_blob(self, repository: str, digest: str, evidence: int | None = None) -> bool:
        """Remove a blob from a repository (the bytes stay until GC); whether it was linked.
        With `evidence`, only while the repository is still at that version."""
        async with self.transaction() as db:
            if evidence is not None:
                await expect_evidence(db, repository, evidence)
            cursor = await db.execute(
                "DELETE FROM repository_blobs WHERE repository = ? AND digest = ?",
                (repository, digest),
            )
            return cursor.rowcount > 0

    async def start_upload(self, upload_id: str, repository: str) -> None:
        """Record a new upload session."""
        now = time.time()

        async def start(db: Any) -> None:
            await db.execute(
                "INSERT INTO uploads (id, repository, started_at) VALUES (?, ?, ?)",
                (upload_id, repository, now),
            )

        await self.write(start)

    async def upload_repository(self, upload_id: str) -> str | None:
        """The repository an upload session belongs to, or None if there is no such session."""
        row = await self._one("SELECT repository FROM uploads WHERE id = ?", (upload_id,))
        return None if row is None else str(row[0])

    async def end_upload(self, upload_id: str) -> None:
        """Forget an upload session (finished or cancelled)."""

        async def end(db: Any) -> None:
            await db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))

        await self.write(end)

    async def uploads_started_before(self, cutoff: float) -> list[str]:
        """Upload sessions older than `cutoff` (epoch seconds)."""
        rows = await self._all("SELECT id FROM uploads WHERE started_at < ?", (cutoff,))
        return [row[0] for row in rows]

    async def upload_ids(self) -> set[str]:
        """Every upload session the database knows."""
        return {row[0] for row in await self._all("SELECT id FROM uploads")}


async def _link_blob(db: aiosqlite.Connection, repository: str, digest: str, now: float) -> None:
    """Link a recorded blob into a repository (creating the repository's row if needed)."""
    await ensure_repository(db, repository, now)
    await db.execute(
        "INSERT OR IGNORE INTO repository_blobs (repository, digest, linked_at) VALUES (?, ?, ?)",
        (repository, digest, now),
    )
