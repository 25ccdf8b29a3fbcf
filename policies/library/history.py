"""Tag history: what each declared library tag pointed at, from when until when.

Retagging a library tag to a new digest is how ops roll out a patched base: the old row gets its
`until`, a new row starts, and every image built on the tag has its `current` flag recomputed in
the same transaction. The rows are `library_tag_history` (see `storage.layout`); this module is
the only one that writes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import aiosqlite

from policies.library.images import platform_images
from policies.library.lineage import Candidate
from storage.blobstore import BlobStore
from storage.metadata import MetadataDB, Statements


@dataclass(frozen=True, slots=True)
class TagHistoryEntry:
    """One period during which a library tag pointed at one digest."""

    name: str
    tag: str
    repository: str
    digest: str
    since: float
    until: float | None  # None: the tag still points here

    @property
    def current(self) -> bool:
        """Whether the tag still points at `digest`."""
        return self.until is None


@dataclass(frozen=True, slots=True)
class TagMove:
    """A library tag moved from one digest to another: images built on `previous` need a
    rebuild."""

    name: str
    tag: str
    repository: str
    digest: str
    previous: str
    media_type: str
    size: int


#: What a caller adds to the transaction that moves a library tag (the events outbox's
#: `library.tag.updated` rows), so the report exists exactly when the move does.
Announce = Callable[[TagMove], Statements]

#: Held while a registry tag may move (`PolicyGate.tag_guard`): a library tag's history that
#: follows the registry tag after the push's commit (a `signed_by` image once signed) moves
#: under it, so it cannot follow a registry tag that has moved on meanwhile.
TagGuard = Callable[[str, str | None], AbstractAsyncContextManager[None]]

_COLUMNS = "name, tag, repository, digest, since, until"


async def record_tag(
    db: MetadataDB,
    name: str,
    tag: str,
    repository: str,
    digest: str,
    now: float | None = None,
    announce: Announce | None = None,
) -> bool:
    """The library tag `name:tag` points at `digest` from now on; whether it moved (a push of
    the digest it already points at changes nothing). A move away from an earlier digest is
    `announce`d in the same transaction."""
    async with db.transaction() as conn:
        return await move_tag(conn, name, tag, repository, digest, now, announce)


async def move_tag(
    conn: aiosqlite.Connection,
    name: str,
    tag: str,
    repository: str,
    digest: str,
    now: float | None = None,
    announce: Announce | None = None,
) -> bool:
    """`record_tag` inside the caller's write transaction (the push that moves the registry
    tag: both commit or neither does)."""
    now = time.time() if now is None else now
    async with conn.execute(
        "SELECT digest FROM library_tag_history WHERE name = ? AND tag = ? AND until IS NULL",
        (name, tag),
    ) as cursor:
        row = await cursor.fetchone()
    if row is not None and row[0] == digest:
        return False
    if row is not None and announce is not None:
        async with conn.execute(
            "SELECT media_type, size FROM manifests WHERE repository = ? AND digest = ?",
            (repository, digest),
        ) as cursor:
            media_type, size = await cursor.fetchone() or ("", 0)
        move = TagMove(name, tag, repository, digest, row[0], media_type, size)
        for sql, args in announce(move):
            await conn.execute(sql, args)
    await conn.execute(
        "UPDATE library_tag_history SET until = ? WHERE name = ? AND tag = ? AND until IS NULL",
        (now, name, tag),
    )
    await conn.execute(
        f"INSERT INTO library_tag_history ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL)",
        (name, tag, repository, digest, now),
    )
    await conn.execute(
        "UPDATE image_lineage SET current = (base_digest = ?) "
        "WHERE library_name = ? AND library_tag = ?",
        (digest, name, tag),
    )
    return True


async def end_tag_within(
    conn: aiosqlite.Connection, name: str, tag: str, now: float | None = None
) -> None:
    """The library tag `name:tag` was deleted: it points at nothing from now on. Runs inside
    the caller's write transaction (the delete of the registry tag: both commit or neither)."""
    now = time.time() if now is None else now
    await conn.execute(
        "UPDATE library_tag_history SET until = ? WHERE name = ? AND tag = ? AND until IS NULL",
        (now, name, tag),
    )
    await conn.execute(
        "UPDATE image_lineage SET current = 0 WHERE library_name = ? AND library_tag = ?",
        (name, tag),
    )


async def tag_history(
    db: MetadataDB, name: str | None = None, tag: str | None = None
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
    rows = await db.read(
        f"SELECT {_COLUMNS} FROM library_tag_history {clause}ORDER BY name, tag, since, id", args
    )
    return [TagHistoryEntry(*row) for row in rows]


async def candidates(db: MetadataDB, store: BlobStore) -> list[Candidate]:
    """Every platform image of every digest any library tag ever pointed at: what lineage
    compares a pushed image with."""
    periods: dict[tuple[str, str, str, str], list[TagHistoryEntry]] = {}
    for entry in await tag_history(db):
        periods.setdefault((entry.name, entry.tag, entry.repository, entry.digest), []).append(
            entry
        )
    found: list[Candidate] = []
    for (name, tag, repository, digest), entries in periods.items():
        record = await db.get_manifest(repository, digest)
        if record is None:
            continue  # deleted since; nothing left to compare with
        current = any(e.current for e in entries)
        replaced_at = None if current else max(e.until or 0.0 for e in entries)
        since = min(e.since for e in entries)
        for image in await platform_images(db, store, repository, digest, record.content):
            found.append(
                Candidate(name, tag, repository, digest, image, current, since, replaced_at)
            )
    return found
