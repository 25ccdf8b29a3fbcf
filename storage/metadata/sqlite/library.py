"""The library's tag history, lineage and images without a base in SQLite
(`storage.metadata.library`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiosqlite

from storage.metadata.library import (
    LIBRARY_GENERATION,
    Announce,
    ConsumerRow,
    FollowLibraryTag,
    LibraryChange,
    LibraryHistory,
    LibraryMove,
    LineageRow,
    RecordLineage,
    TagHistoryEntry,
)
from storage.metadata.sqlite.connection import (
    SQLiteBase,
    bump_generation,
    fetch_one,
    write_outbox,
)

_HISTORY_COLUMNS = "name, tag, repository, digest, since, until"

#: Platforms of tagged images with their base, the base tag's current digest and when it left
#: the base digest; a `WHERE` and an `ORDER BY` follow.
_CONSUMERS = (
    "SELECT l.repository, t.name, l.image_digest, l.library_name, l.library_tag, l.base_digest, "
    "l.current, "
    "(SELECT h.digest FROM library_tag_history h WHERE h.name = l.library_name "
    " AND h.tag = l.library_tag AND h.until IS NULL), "
    "(SELECT max(h.until) FROM library_tag_history h WHERE h.name = l.library_name "
    " AND h.tag = l.library_tag AND h.digest = l.base_digest), "
    "l.platform "
    "FROM image_lineage l JOIN tags t ON t.repository = l.repository AND t.digest = l.image_digest "
)


class SQLiteLibrary(SQLiteBase):
    """`LibraryRecords` on SQLite."""

    async def move_library_tag(
        self,
        name: str,
        tag: str,
        repository: str,
        digest: str,
        now: float,
        announce: Announce | None = None,
    ) -> bool:
        """The library tag `name:tag` points at `digest` from `now` on; whether it moved."""
        async with self.transaction() as conn:
            return await follow_tag(conn, name, tag, repository, digest, now, announce)

    async def end_library_tag(self, name: str, tag: str, now: float) -> None:
        """The library tag `name:tag` points at nothing from `now` on."""
        async with self.transaction() as conn:
            await end_tag(conn, name, tag, now)

    async def library_tag_history(
        self, name: str | None = None, tag: str | None = None
    ) -> list[TagHistoryEntry]:
        """History rows, oldest first, of every library tag (or of one image, or one tag)."""
        where, args = [], []
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if tag is not None:
            where.append("tag = ?")
            args.append(tag)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = await self._all(
            f"SELECT {_HISTORY_COLUMNS} FROM library_tag_history {clause}"
            "ORDER BY name, tag, since, id",
            args,
        )
        return [TagHistoryEntry(*row) for row in rows]

    async def library_history(self) -> LibraryHistory:
        """Every history row with the generation it was read at, in one statement (so the
        rows are exactly those of that generation: a move bumps it in its own transaction)."""
        rows = await self._all(
            f"SELECT g.generation, {', '.join('h.' + c for c in _HISTORY_COLUMNS.split(', '))} "
            "FROM (SELECT coalesce((SELECT generation FROM shared_generations WHERE name = ?), "
            "0) AS generation) AS g "
            "LEFT JOIN library_tag_history h ON 1 = 1 ORDER BY h.name, h.tag, h.since, h.id",
            (LIBRARY_GENERATION,),
        )
        generation = int(rows[0][0]) if rows else 0
        entries = tuple(TagHistoryEntry(*row[1:]) for row in rows if row[1] is not None)
        return LibraryHistory(generation, entries)

    async def record_lineage(
        self,
        repository: str,
        digest: str,
        bases: Sequence[LineageRow],
        first_layers: Sequence[str],
        now: float,
    ) -> None:
        """Replace the recorded bases of `repository@digest`; with none, it waits for one."""

        async def record(conn: Any) -> None:
            await write_lineage(conn, repository, digest, bases, first_layers, now)

        # A write job (a lineage traced again): shares a commit with the pushes meanwhile.
        await self.write(record)

    async def images_without_base(
        self, first_layers: Sequence[str], outside: str, limit: int
    ) -> list[tuple[str, str]]:
        """(repository, digest) of images waiting for a base that start with a layer of
        `first_layers`, outside repository `outside`."""
        if not first_layers:
            return []
        rows = await self._all(
            "SELECT DISTINCT repository, image_digest FROM images_without_base "
            f"WHERE first_layer IN ({', '.join('?' * len(first_layers))}) AND repository != ? "
            "ORDER BY repository, image_digest LIMIT ?",
            (*first_layers, outside, limit),
        )
        return [(row[0], row[1]) for row in rows]

    async def forget_image_without_base(self, repository: str, digest: str) -> None:
        """Stop waiting for a base for a manifest."""
        async with self.transaction() as conn:
            await conn.execute(
                "DELETE FROM images_without_base WHERE repository = ? AND image_digest = ?",
                (repository, digest),
            )

    async def lineage_of(self, repository: str, digest: str) -> list[LineageRow]:
        """The library bases recorded for a manifest, by platform."""
        rows = await self._all(
            "SELECT platform, library_name, library_tag, base_digest, current, shared_layers, "
            "recorded_at FROM image_lineage WHERE repository = ? AND image_digest = ? "
            "ORDER BY platform",
            (repository, digest),
        )
        return [
            LineageRow(r[0], r[1], r[2], r[3], bool(r[4]), int(r[5]), float(r[6])) for r in rows
        ]

    async def library_consumers(self, name: str, tag: str) -> list[ConsumerRow]:
        """Platforms of tagged images built on library tag `name:tag`."""
        rows = await self._all(
            _CONSUMERS + "WHERE l.library_name = ? AND l.library_tag = ? "
            "ORDER BY l.repository, t.name, l.platform",
            (name, tag),
        )
        return [_consumer(row) for row in rows]

    async def stale_consumers(self) -> list[ConsumerRow]:
        """Platforms of tagged images whose base is no longer its tag's current digest."""
        rows = await self._all(
            _CONSUMERS + "WHERE l.current = 0 ORDER BY l.repository, t.name, l.platform"
        )
        return [_consumer(row) for row in rows]

    async def consumer_counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(library name, tag) -> (tagged consumers, of which stale)."""
        rows = await self._all(
            "SELECT l.library_name, l.library_tag, count(DISTINCT l.repository || '\n' || t.name), "
            "count(DISTINCT CASE WHEN l.current = 0 THEN l.repository || '\n' || t.name END) "
            "FROM image_lineage l JOIN tags t ON t.repository = l.repository "
            "AND t.digest = l.image_digest GROUP BY l.library_name, l.library_tag"
        )
        return {(row[0], row[1]): (int(row[2]), int(row[3])) for row in rows}


async def write_lineage(
    conn: aiosqlite.Connection,
    repository: str,
    digest: str,
    bases: Sequence[LineageRow],
    first_layers: Sequence[str],
    now: float,
) -> None:
    """Inside a write transaction: replace the recorded bases of `repository@digest`; with
    none, it waits for one under its `first_layers`."""
    rows = [
        (
            repository,
            digest,
            base.platform,
            base.library_name,
            base.library_tag,
            base.base_digest,
            int(base.current),
            base.shared_layers,
            now,
        )
        for base in bases
    ]
    await conn.execute(
        "DELETE FROM image_lineage WHERE repository = ? AND image_digest = ?",
        (repository, digest),
    )
    await conn.executemany(
        "INSERT OR REPLACE INTO image_lineage (repository, image_digest, platform, "
        "library_name, library_tag, base_digest, current, shared_layers, recorded_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    await conn.execute(
        "DELETE FROM images_without_base WHERE repository = ? AND image_digest = ?",
        (repository, digest),
    )
    if not rows:
        await conn.executemany(
            "INSERT OR IGNORE INTO images_without_base (first_layer, repository, "
            "image_digest) VALUES (?, ?, ?)",
            [(layer, repository, digest) for layer in first_layers],
        )


async def follow_tag(
    conn: aiosqlite.Connection,
    name: str,
    tag: str,
    repository: str,
    digest: str,
    now: float,
    announce: Announce | None,
) -> bool:
    """Inside a write transaction: the library tag `name:tag` points at `digest` from `now` on;
    whether it moved. The previous period ends, lineage flags are recomputed, a move away from
    an earlier digest is `announce`d."""
    row = await fetch_one(
        conn,
        "SELECT digest FROM library_tag_history WHERE name = ? AND tag = ? AND until IS NULL",
        (name, tag),
    )
    if row is not None and row[0] == digest:
        return False
    if row is not None and announce is not None:
        media_type, size = await fetch_one(
            conn,
            "SELECT media_type, size FROM manifests WHERE repository = ? AND digest = ?",
            (repository, digest),
        ) or ("", 0)
        move = LibraryMove(name, tag, repository, digest, row[0], media_type, size)
        await write_outbox(conn, announce(move))
    await conn.execute(
        "UPDATE library_tag_history SET until = ? WHERE name = ? AND tag = ? AND until IS NULL",
        (now, name, tag),
    )
    await conn.execute(
        f"INSERT INTO library_tag_history ({_HISTORY_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL)",
        (name, tag, repository, digest, now),
    )
    await conn.execute(
        "UPDATE image_lineage SET current = (base_digest = ?) "
        "WHERE library_name = ? AND library_tag = ?",
        (digest, name, tag),
    )
    # Pushes traced against the history as it was no longer store (`library_generation`).
    await bump_generation(conn, LIBRARY_GENERATION)
    return True


async def end_tag(conn: aiosqlite.Connection, name: str, tag: str, now: float) -> None:
    """Inside a write transaction: the library tag `name:tag` points at nothing from `now` on."""
    await conn.execute(
        "UPDATE library_tag_history SET until = ? WHERE name = ? AND tag = ? AND until IS NULL",
        (now, name, tag),
    )
    await conn.execute(
        "UPDATE image_lineage SET current = 0 WHERE library_name = ? AND library_tag = ?",
        (name, tag),
    )
    await bump_generation(conn, LIBRARY_GENERATION)


async def apply_library_changes(
    conn: aiosqlite.Connection, changes: Sequence[LibraryChange], now: float
) -> list[LibraryChange]:
    """Make `changes` inside a registry write's transaction, in order; those that changed the
    history (a recorded lineage is not history)."""
    made: list[LibraryChange] = []
    for change in changes:
        if isinstance(change, RecordLineage):
            await write_lineage(
                conn, change.repository, change.digest, change.bases, change.first_layers, now
            )
        elif isinstance(change, FollowLibraryTag):
            if await follow_tag(
                conn,
                change.name,
                change.tag,
                change.repository,
                change.digest,
                now,
                change.announce,
            ):
                made.append(change)
        else:
            await end_tag(conn, change.name, change.tag, now)
            made.append(change)
    return made


def _consumer(row: Sequence[Any]) -> ConsumerRow:
    return ConsumerRow(
        repository=str(row[0]),
        tag=str(row[1]),
        image_digest=str(row[2]),
        library_name=str(row[3]),
        library_tag=str(row[4]),
        base_digest=str(row[5]),
        current=bool(row[6]),
        current_digest=None if row[7] is None else str(row[7]),
        replaced_at=None if row[8] is None else float(row[8]),
        platform=str(row[9] or ""),
    )
