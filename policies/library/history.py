"""Tag history: what each declared library tag pointed at, from when until when.

Retagging a library tag to a new digest is how ops roll out a patched base: the old row gets its
`until`, a new row starts, and every image built on the tag has its `current` flag recomputed in
the same transaction. The rows are `library_tag_history`, kept by the metadata interface
(`storage.metadata.library`); this module is the only caller that moves them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from policies.library.images import platform_images
from policies.library.lineage import Candidate
from storage.blobstore import BlobStore
from storage.metadata import (
    Announce,
    LibraryHistory,
    LibraryMove,
    MetadataDB,
    TagHistoryEntry,
    tag_key,
)

#: A library tag's move, as the metadata interface reports it to an `Announce`.
TagMove = LibraryMove


class TagLocks(Protocol):
    """The registry tags' locks, which every push by tag holds on every worker and replica
    (`PolicyGate` is one). A library tag's history that follows a registry tag outside the
    push (a `signed_by` image once signed, an import) moves under the registry tag's lock, so
    it cannot follow a registry tag that has moved on meanwhile; and confirms the lock just
    before its commit, since a PostgreSQL lock can go with its connection while held."""

    def tag_guard(self, repository: str, tag: str | None) -> AbstractAsyncContextManager[None]:
        """Hold the lock of `repository:tag` (nothing for no tag) while the block runs."""
        ...

    async def confirm_tags(self, repository: str, tags: Iterable[str | None]) -> None:
        """Raise `storage.errors.LockLost` if the lock of any of `tags`, held by this
        process's `tag_guard`, was lost."""
        ...


class DatabaseTagLocks:
    """`TagLocks` taken on the metadata database itself, for what runs without the registry's
    policy gate (`trustyard library import` and `sync`): the same named locks pushes take."""

    def __init__(self, db: MetadataDB) -> None:
        self.db = db

    @asynccontextmanager
    async def tag_guard(self, repository: str, tag: str | None) -> AsyncIterator[None]:
        """Hold the tag's lock across every process on the database."""
        if tag is None:
            yield
            return
        async with self.db.exclusive(tag_key(repository, tag)):
            yield

    async def confirm_tags(self, repository: str, tags: Iterable[str | None]) -> None:
        """`LockLost` unless each tag's lock is still held."""
        for tag in tags:
            if tag is not None:
                await self.db.confirm(tag_key(repository, tag))


__all__ = [
    "Announce",
    "DatabaseTagLocks",
    "HistoryCache",
    "LibraryHistory",
    "TagHistoryEntry",
    "TagLocks",
    "TagMove",
    "candidates",
    "end_tag",
    "record_tag",
    "tag_history",
]


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
    `announce`d in the same transaction, and the images built on the tag have their `current`
    flag recomputed in it."""
    now = time.time() if now is None else now
    return await db.move_library_tag(name, tag, repository, digest, now, announce)


async def end_tag(db: MetadataDB, name: str, tag: str, now: float | None = None) -> None:
    """The library tag `name:tag` was deleted: it points at nothing from now on."""
    await db.end_library_tag(name, tag, time.time() if now is None else now)


async def tag_history(
    db: MetadataDB, name: str | None = None, tag: str | None = None
) -> list[TagHistoryEntry]:
    """History rows, oldest first, of every library tag (or of one image, or one tag)."""
    return await db.library_tag_history(name, tag)


class HistoryCache:
    """The library's history as this process last read it, for tracing pushes without reading
    the whole table each time (a push's premise, not a promise).

    What a push traces and decides against it is only stored if the history's generation is
    still the one it was read at, checked in the push's own transaction under the database's
    write lock (`put_manifest(library_generation=...)`): a library tag moved by any process
    before that commit makes the push trace and decide again (`LibraryMoved`), against the
    history read afresh. So nothing is ever stored, or refused, on a history older than the
    last move committed before the push's own commit; the cache only saves the read when the
    library did not move, which is almost always."""

    def __init__(self) -> None:
        self._history: LibraryHistory | None = None

    async def snapshot(self, db: MetadataDB) -> LibraryHistory:
        """The history as last read (read now when there is none)."""
        if self._history is None:
            return await self.refresh(db)
        return self._history

    async def refresh(self, db: MetadataDB) -> LibraryHistory:
        """The history read now (and kept, unless a newer one was kept meanwhile)."""
        history = await db.library_history()
        kept = self._history
        if kept is None or history.generation >= kept.generation:
            self._history = history
        return history

    def forget(self) -> None:
        """Read the history afresh at the next `snapshot`."""
        self._history = None


async def candidates(
    db: MetadataDB, store: BlobStore, history: LibraryHistory | None = None
) -> list[Candidate]:
    """Every platform image of every digest any library tag ever pointed at (in `history`,
    default: read now): what lineage compares a pushed image with."""
    periods: dict[tuple[str, str, str, str], list[TagHistoryEntry]] = {}
    entries = await tag_history(db) if history is None else history.entries
    for entry in entries:
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
