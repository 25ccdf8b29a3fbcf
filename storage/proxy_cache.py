"""The proxy's own rows: when each proxied tag was last confirmed upstream (`proxy_tags`, see
`storage.layout`). Manifests, tags and blobs pulled through the proxy are stored like pushed
ones; only this freshness record is the proxy's."""

from __future__ import annotations

from storage.metadata import MetadataDB


async def tag_validated_at(db: MetadataDB, repository: str, tag: str) -> float | None:
    """When the upstream last confirmed what `tag` of `repository` points at, or None."""
    rows = await db.read(
        "SELECT validated_at FROM proxy_tags WHERE repository = ? AND tag = ?", (repository, tag)
    )
    return float(rows[0][0]) if rows else None


async def mark_tag_validated(db: MetadataDB, repository: str, tag: str, when: float) -> None:
    """Record that the upstream confirmed `tag` of `repository` at `when`."""
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO proxy_tags (repository, tag, validated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (repository, tag) DO UPDATE SET validated_at = excluded.validated_at",
            (repository, tag, when),
        )
