"""The proxy's records in SQLite (`storage.metadata.proxy`)."""

from __future__ import annotations

import json

import aiosqlite

from storage.metadata.proxy import CachedImage
from storage.metadata.sqlite.connection import SQLiteBase, bump_evidence


class SQLiteProxy(SQLiteBase):
    """`ProxyRecords` on SQLite."""

    async def tag_validated_at(self, repository: str, tag: str) -> float | None:
        """When the upstream last confirmed what `tag` of `repository` points at, or None."""
        rows = await self.read(
            "SELECT validated_at FROM proxy_tags WHERE repository = ? AND tag = ?",
            (repository, tag),
        )
        return float(rows[0][0]) if rows else None

    async def mark_tag_validated(self, repository: str, tag: str, when: float) -> None:
        """Record that the upstream confirmed `tag` of `repository` at `when`."""
        async with self.transaction() as conn:
            await conn.execute(
                "INSERT INTO proxy_tags (repository, tag, validated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (repository, tag) DO UPDATE SET validated_at = excluded.validated_at",
                (repository, tag, when),
            )

    async def mark_pulled(self, pulls: list[tuple[str, str, float]]) -> None:
        """Record when proxied manifests were last pulled: (repository, digest, when) each."""
        if not pulls:
            return
        async with self.transaction() as conn:
            await conn.executemany(
                "INSERT INTO proxy_pulls (repository, digest, last_pulled) VALUES (?, ?, ?) "
                "ON CONFLICT (repository, digest) DO UPDATE SET "
                # CASE, not SQLite's two-argument MAX: the same statement runs on PostgreSQL.
                "last_pulled = CASE WHEN excluded.last_pulled > proxy_pulls.last_pulled "
                "THEN excluded.last_pulled ELSE proxy_pulls.last_pulled END",
                pulls,
            )

    async def eviction_order(self, repositories: list[str], limit: int) -> list[CachedImage]:
        """The least recently pulled evictable manifests of `repositories`, oldest first."""
        rows = await self.read(
            "SELECT m.repository, m.digest, COALESCE(p.last_pulled, m.created_at) AS used "
            "FROM manifests m LEFT JOIN proxy_pulls p "
            "  ON p.repository = m.repository AND p.digest = m.digest "
            "WHERE m.repository IN (SELECT value FROM json_each(?)) AND m.subject IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM manifest_references r WHERE r.repository = m.repository "
            "  AND r.child_digest = m.digest AND r.kind = 'manifest') "
            "AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repository = m.repository "
            "  AND t.digest = m.digest AND substr(t.name, 1, 7) = 'sha256-') "
            "ORDER BY used, m.repository, m.digest LIMIT ?",
            (json.dumps(repositories), limit),
        )
        return [CachedImage(row[0], row[1], float(row[2])) for row in rows]

    async def exclusive_bytes(self, repositories: list[str]) -> int:
        """Bytes of the blobs and manifests only `repositories` hold: what evicting all of them
        could free (a blob another repository links or references is not counted)."""
        names = json.dumps(repositories)
        blob_rows = await self.read(
            "SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN ("
            "  SELECT rb.digest FROM repository_blobs rb "
            "  WHERE rb.repository IN (SELECT value FROM json_each(:names))) "
            "AND NOT EXISTS (SELECT 1 FROM repository_blobs o WHERE o.digest = b.digest "
            "  AND o.repository NOT IN (SELECT value FROM json_each(:names))) "
            "AND NOT EXISTS (SELECT 1 FROM manifest_references r WHERE r.child_digest = b.digest "
            "  AND r.kind = 'blob' AND r.repository NOT IN (SELECT value FROM json_each(:names)))",
            {"names": names},
        )
        manifest_rows = await self.read(
            "SELECT COALESCE(SUM(size), 0) FROM manifests "
            "WHERE repository IN (SELECT value FROM json_each(?))",
            (names,),
        )
        return int(blob_rows[0][0]) + int(manifest_rows[0][0])

    async def evict_image(self, repository: str, digest: str) -> list[str]:
        """Remove a proxied image from `repository` in one transaction: the manifest, the index
        children no other manifest lists, its signatures and attestations (referrers and
        `sha256-<hex>` tags), their tags and freshness rows, and the repository's links to blobs no
        remaining manifest of it references (the bytes go at the next garbage collection, unless
        another repository needs them). Returns the manifest digests removed."""
        algorithm, _, hex_part = digest.partition(":")
        async with self.transaction() as conn:
            gone = [digest]
            children = await conn.execute_fetchall(
                "SELECT child_digest FROM manifest_references WHERE repository = ? "
                "AND manifest_digest = ? AND kind = 'manifest'",
                (repository, digest),
            )
            companions = await conn.execute_fetchall(
                "SELECT digest FROM manifests WHERE repository = ? AND subject = ? "
                "UNION SELECT digest FROM tags WHERE repository = ? AND name IN (?, ?, ?)",
                (
                    repository,
                    digest,
                    repository,
                    f"{algorithm}-{hex_part}",
                    f"{algorithm}-{hex_part}.sig",
                    f"{algorithm}-{hex_part}.att",
                ),
            )
            gone += [row[0] for row in companions]
            await self._delete_manifests(conn, repository, gone)
            for (child,) in children:
                listed = await conn.execute_fetchall(
                    "SELECT 1 FROM manifest_references WHERE repository = ? AND child_digest = ? "
                    "AND kind = 'manifest' LIMIT 1",
                    (repository, child),
                )
                if not listed:
                    await self._delete_manifests(conn, repository, [child])
                    gone.append(child)
            await conn.execute(
                "DELETE FROM repository_blobs WHERE repository = ? AND NOT EXISTS ("
                "  SELECT 1 FROM manifest_references r"
                "  WHERE r.repository = repository_blobs.repository"
                "  AND r.child_digest = repository_blobs.digest AND r.kind = 'blob')",
                (repository,),
            )
            await conn.execute(
                "DELETE FROM proxy_tags WHERE repository = ? AND NOT EXISTS ("
                "  SELECT 1 FROM tags t WHERE t.repository = proxy_tags.repository "
                "  AND t.name = proxy_tags.tag)",
                (repository,),
            )
            await bump_evidence(conn, repository)
        return gone

    @staticmethod
    async def _delete_manifests(
        conn: aiosqlite.Connection, repository: str, digests: list[str]
    ) -> None:
        await conn.executemany(
            "DELETE FROM manifests WHERE repository = ? AND digest = ?",
            [(repository, d) for d in digests],
        )
        await conn.executemany(
            "DELETE FROM proxy_pulls WHERE repository = ? AND digest = ?",
            [(repository, d) for d in digests],
        )
