"""What ops ask of the library: its images and tags with their history, the images built on a
tag, and the rebuild list (images whose base tag has moved on).

Served by `GET /api/v1/library`, `GET /api/v1/library/{name}/{tag}/consumers` and printed by
`trustyard library stale`. Only tagged application images are reported: an index's children
are reported through the index.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from policies.library.declaration import Library
from policies.library.history import TagHistoryEntry, tag_history
from policies.library.signing import Pending, pending_tags
from storage.metadata import ConsumerRow, MetadataDB


@dataclass
class Consumer:
    """A tagged image built on a library tag (all its platforms on one row)."""

    repository: str
    tag: str
    digest: str
    library_name: str
    library_tag: str
    base_digest: str
    current: bool  # whether base_digest is still the library tag's current digest
    current_digest: str | None  # what the library tag points at now
    replaced_at: float | None  # when the library tag moved away from base_digest
    platforms: list[str] = field(default_factory=list)

    def behind(self, now: float) -> float:
        """Seconds since the base was replaced (0 while current)."""
        if self.current or self.replaced_at is None:
            return 0.0
        return max(0.0, now - self.replaced_at)

    @property
    def base(self) -> str:
        """`python:3.12-slim@sha256:…`."""
        return f"{self.library_name}:{self.library_tag}@{self.base_digest}"

    def as_json(self, now: float) -> dict[str, Any]:
        """The row as the API and `--json` show it."""
        return {**asdict(self), "base": self.base, "behind_seconds": round(self.behind(now))}


def _consumers(rows: Sequence[ConsumerRow]) -> list[Consumer]:
    """One `Consumer` per tagged image and base, its platforms gathered (rows come ordered)."""
    grouped: dict[tuple[str, ...], Consumer] = {}
    for row in rows:
        key = (
            row.repository,
            row.tag,
            row.image_digest,
            row.library_name,
            row.library_tag,
            row.base_digest,
        )
        consumer = grouped.get(key)
        if consumer is None:
            consumer = grouped[key] = Consumer(
                repository=row.repository,
                tag=row.tag,
                digest=row.image_digest,
                library_name=row.library_name,
                library_tag=row.library_tag,
                base_digest=row.base_digest,
                current=row.current,
                current_digest=row.current_digest,
                replaced_at=None if row.current else row.replaced_at,
            )
        if row.platform:
            consumer.platforms.append(row.platform)
    return list(grouped.values())


async def consumers(db: MetadataDB, name: str, tag: str) -> list[Consumer]:
    """Tagged images built on library tag `name:tag` (any digest it ever pointed at)."""
    return _consumers(await db.library_consumers(name, tag))


async def stale_images(db: MetadataDB) -> list[Consumer]:
    """The rebuild list: tagged images whose base digest is no longer its tag's current one,
    longest behind first."""
    rows = await db.stale_consumers()
    return sorted(_consumers(rows), key=lambda c: (c.replaced_at or 0.0, c.repository, c.tag))


async def consumer_counts(db: MetadataDB) -> dict[tuple[str, str], tuple[int, int]]:
    """(library name, tag) -> (tagged consumers, of which stale)."""
    return await db.consumer_counts()


def _iso(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat()


def _period(entry: TagHistoryEntry) -> dict[str, Any]:
    return {
        "digest": entry.digest,
        "since": entry.since,
        "until": entry.until,
        "since_iso": _iso(entry.since),
        "until_iso": _iso(entry.until),
    }


def _pending(entry: Pending | None) -> dict[str, Any] | None:
    return None if entry is None else {"digest": entry.digest, "reason": entry.reason}


async def overview(
    db: MetadataDB, library: Library | None, now: float | None = None
) -> dict[str, Any]:
    """Every declared library image with its tags: current digest, history (newest first),
    deprecation, consumers, and the digest pushed to the tag but pending its `signed_by`
    signature (`pending`, else null)."""
    now = time.time() if now is None else now
    today = datetime.fromtimestamp(now, UTC).date()
    if library is None:
        return {"namespace": None, "images": []}
    history: dict[tuple[str, str], list[TagHistoryEntry]] = {}
    for entry in await tag_history(db):
        history.setdefault((entry.name, entry.tag), []).append(entry)
    counts = await consumer_counts(db)
    pending = {(p.name, p.tag): p for p in await pending_tags(db, library)}
    images = []
    for image in library.images:
        tags = []
        for tag in image.tags:
            periods = history.get((image.name, tag), [])
            current = next((p for p in periods if p.current), None)
            total, stale = counts.get((image.name, tag), (0, 0))
            tags.append(
                {
                    "tag": tag,
                    "digest": None if current is None else current.digest,
                    "since": None if current is None else current.since,
                    "history": [_period(p) for p in reversed(periods)],
                    "consumers": total,
                    "stale_consumers": stale,
                    "pending": _pending(pending.get((image.name, tag))),
                }
            )
        images.append(
            {
                "name": image.name,
                "repository": library.repository(image.name),
                "source": image.source,
                "signed_by": list(image.signed_by),
                "supported_until": (
                    None if image.supported_until is None else image.supported_until.isoformat()
                ),
                "deprecated": image.deprecated(today),
                "tags": tags,
            }
        )
    return {"namespace": library.namespace, "images": images}
