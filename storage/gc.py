"""Garbage collection: remove what nothing references, safely while the registry serves.

Every deletion is re-decided inside the write transaction that performs it, with the rules of
`storage.gc_rules`; transactions are small (a batch sized to take a few milliseconds) and a pause
follows each, so a server write waiting on SQLite's lock waits milliseconds, never seconds.

1. manifests the rules let go, pass after pass until a pass removes nothing (an index going frees
   its children, a subject going frees its referrers) — when `delete_untagged`;
2. blobs the rules let go, by the blob deletion protocol (docs/architecture.md): each batch is
   moved to the store's trash, its rows are deleted where the rule still holds, and the trash is
   emptied for those and put back for the others;
3. blob files the database does not know (a crash between placement and record), older than the
   grace period, by the same protocol;
4. upload sessions, and upload files without a session, older than the stale-upload age, each
   under the upload's lock (one a request is writing now, on any replica, is kept).

A blob trashed by a collection that stopped half way is put back or deleted first. One collection
runs at a time on a metadata database (the `gc` lock of `storage.metadata.coordination`, across
machines); what the servers do meanwhile, on any replica, is in the database and the store (rows,
their `last_seen`, upload sessions, blob files' ages), which every rule reads afresh. A dry run
simulates the same rules, cascade included, in one read snapshot and removes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from storage.blobstore import BlobStore, StoredObject
from storage.errors import StorageFull
from storage.metadata import GC_KEY, MetadataDB, upload_key
from storage.oci.digests import parse_digest

log = logging.getLogger(__name__)


class CollectionRunning(Exception):
    """Another garbage collection (or fsck) holds the database's collection lock."""

    def __init__(self) -> None:
        super().__init__("another gc or fsck is running on this metadata database")


#: Files listed per batch of the orphan sweep (S3's DeleteObjects takes at most 1000 keys).
ORPHAN_BATCH = 1000


@dataclass
class Pacing:
    """How a collection shares SQLite's single write lock with the server.

    The batch size adapts so that one transaction takes about `target` seconds; after each, the
    collection pauses at least `pause` seconds (and as long as the transaction took), which lets
    a writer that found the lock taken get it at its first or second retry.
    """

    target: float = 0.005
    pause: float = 0.01
    smallest: int = 16
    largest: int = 500
    size: int = 64

    async def after(self, elapsed: float) -> None:
        """Adapt the batch size to a transaction that took `elapsed` seconds, then pause (the
        collection holds the lock at most half the time)."""
        if elapsed > self.target:
            self.size = max(self.smallest, self.size // 2)
        elif elapsed < self.target / 2:
            self.size = min(self.largest, self.size * 2)
        await asyncio.sleep(max(self.pause, elapsed))


@dataclass
class GCReport:
    """What a collection removed (or, in a dry run, would remove)."""

    manifests: list[tuple[str, str]] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    dry_run: bool = False

    def sort(self) -> GCReport:
        """Put every list in a stable order (a real run and a dry run then print alike)."""
        self.manifests.sort()
        self.blobs.sort()
        self.orphan_files.sort()
        self.uploads.sort()
        return self

    def summary(self) -> dict[str, int]:
        """How many of each kind went, and the bytes freed."""
        return {
            "manifests": len(self.manifests),
            "blobs": len(self.blobs),
            "orphan_files": len(self.orphan_files),
            "uploads": len(self.uploads),
            "bytes_freed": self.bytes_freed,
        }

    def lines(self) -> list[str]:
        """One line per removed item, then a summary."""
        out = [f"manifest {repo}@{digest}" for repo, digest in self.manifests]
        out += [f"blob {digest}" for digest in self.blobs]
        out += [f"orphan blob file {digest}" for digest in self.orphan_files]
        out += [f"upload {upload}" for upload in self.uploads]
        out.append(
            f"{len(self.manifests)} manifests, {len(self.blobs) + len(self.orphan_files)} blobs "
            f"({self.bytes_freed} bytes), {len(self.uploads)} uploads"
        )
        return out

    def as_json(self) -> dict[str, Any]:
        """The report as a JSON document (`gc --json`)."""
        return {
            "dry_run": self.dry_run,
            "manifests": [{"repository": r, "digest": d} for r, d in self.manifests],
            "blobs": self.blobs,
            "orphan_files": self.orphan_files,
            "uploads": self.uploads,
            "bytes_freed": self.bytes_freed,
        }


async def collect_garbage(
    db: MetadataDB,
    store: BlobStore,
    *,
    grace_period: float,
    stale_upload_age: float,
    delete_untagged: bool = True,
    dry_run: bool = False,
    now: float | None = None,
    pacing: Pacing | None = None,
    progress: Callable[[GCReport], None] | None = None,
) -> GCReport:
    """Run one collection (or simulate it with `dry_run`) and report what went; `progress`
    is shown the report so far after every deleting transaction."""
    now = time.time() if now is None else now
    cutoff = now - grace_period
    upload_cutoff = now - stale_upload_age
    if dry_run:
        report = await _simulate(db, store, cutoff, upload_cutoff, delete_untagged)
    else:
        # One collection at a time on the database, from whichever machine: a second one would
        # put back (`recover_trash`) what the first is half way through deleting.
        async with db.exclusive(GC_KEY, wait=False) as alone:
            if not alone:
                raise CollectionRunning()
            run = _Collection(db, store, cutoff, pacing or Pacing(), progress)
            await run.recover_trash()
            if delete_untagged:
                await run.manifests()
            await run.blobs()
            await run.orphans()
            await run.uploads(upload_cutoff)
            report = run.report
    report.sort()
    for line in report.lines():
        log.info("gc%s: %s", " (dry run)" if dry_run else "", line)
    if not dry_run:
        # Remembered for the console; a disk still too full to record it fails nothing.
        with contextlib.suppress(StorageFull):
            await db.record_gc_run(now, time.time(), report.summary())
    return report


class _Collection:
    """One real collection run."""

    def __init__(
        self,
        db: MetadataDB,
        store: BlobStore,
        cutoff: float,
        pacing: Pacing,
        progress: Callable[[GCReport], None] | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.cutoff = cutoff
        self.pacing = pacing
        self.progress = progress
        self.report = GCReport()

    async def _paced(self, deletion: Awaitable[list[int]]) -> list[int]:
        """Run one deleting transaction, then show progress and pause."""
        started = time.monotonic()
        try:
            # Still the only collection (a PostgreSQL lock is lost with its connection): else
            # another may be putting back what this one deletes.
            await self.db.confirm(GC_KEY)
        except BaseException:
            if isinstance(deletion, Coroutine):
                deletion.close()
            raise
        try:
            return await deletion
        finally:
            if self.progress is not None:
                self.progress(self.report)
            await self.pacing.after(time.monotonic() - started)

    async def recover_trash(self) -> None:
        """Settle blobs a collection that stopped half way left in the trash."""
        trashed = [digest async for digest in self.store.list_trash()]
        for first in range(0, len(trashed), ORPHAN_BATCH):
            batch = trashed[first : first + ORPHAN_BATCH]
            known = await self.db.known_among([str(d) for d in batch])
            await self.store.restore_from_trash([d for d in batch if str(d) in known])
            gone = [d for d in batch if str(d) not in known]
            await self.store.empty_trash(gone)
            self.report.orphan_files += [str(d) for d in gone]

    async def manifests(self) -> None:
        """Delete collectable manifests, pass after pass, until a pass deletes nothing."""
        while True:
            deleted_in_pass = 0
            after = ("", "")
            while True:
                page = await self.db.collectable_manifests(self.cutoff, after, self.pacing.size)
                if not page:
                    break
                after = page[-1]
                for position in await self._paced(
                    self.db.delete_manifests_if_collectable(self.cutoff, page)
                ):
                    self.report.manifests.append((page[position][0], page[position][1]))
                    deleted_in_pass += 1
            if deleted_in_pass == 0:
                return

    async def blobs(self) -> None:
        """Delete collectable blobs by the deletion protocol, a batch at a time."""
        after = ""
        while True:
            page = await self.db.collectable_blobs(self.cutoff, after, self.pacing.size)
            if not page:
                return
            after = page[-1][0]
            digests = [parse_digest(row[0]) for row in page]
            await self.store.move_to_trash(digests)
            try:
                deleted = set(
                    await self._paced(
                        self.db.delete_blobs_if_collectable(self.cutoff, [d for d, _ in page])
                    )
                )
            except BaseException:
                await self.store.restore_from_trash(digests)
                raise
            await self.store.empty_trash([digests[i] for i in sorted(deleted)])
            saved = [d for i, d in enumerate(digests) if i not in deleted]
            if saved:
                await self.store.restore_from_trash(saved)
            for position in sorted(deleted):
                self.report.blobs.append(page[position][0])
                self.report.bytes_freed += int(page[position][1])

    async def orphans(self) -> None:
        """Delete old blob files the database does not know, by the same protocol: trashed
        first, then looked up again, so one recorded meanwhile is put back."""
        batch: list[StoredObject] = []
        async for stored in self.store.list_blobs():
            if stored.modified < self.cutoff:
                batch.append(stored)
            if len(batch) >= ORPHAN_BATCH:
                await self._orphan_batch(batch)
                batch = []
        if batch:
            await self._orphan_batch(batch)

    async def _orphan_batch(self, batch: list[StoredObject]) -> None:
        known = await self.db.known_among([s.name for s in batch])
        unknown = [s for s in batch if s.name not in known]
        if not unknown:
            return
        digests = [parse_digest(s.name) for s in unknown]
        await self.store.move_to_trash(digests)
        # Read after the move: a blob recorded before this read is kept; one recorded after it
        # finds its file missing and is placed again by its uploader (storage.blob_commit).
        known = await self.db.known_among([s.name for s in unknown])
        await self.store.restore_from_trash([d for d in digests if str(d) in known])
        await self.store.empty_trash([d for d in digests if str(d) not in known])
        for stored in unknown:
            if stored.name not in known:
                self.report.orphan_files.append(stored.name)
                self.report.bytes_freed += stored.size

    async def uploads(self, upload_cutoff: float) -> None:
        """Drop stale sessions (each re-decided in the deleting transaction), then their bytes;
        then upload files that have no session. Each under the session's lock, as every
        request writing a session holds it: one a request is writing or committing right now,
        on any worker or replica, is left for the next collection."""
        stale = await self.db.uploads_started_before(upload_cutoff)
        for first in range(0, len(stale), self.pacing.size):
            async with contextlib.AsyncExitStack() as locks:
                ids = [
                    upload_id
                    for upload_id in stale[first : first + self.pacing.size]
                    if await self._hold_upload(locks, upload_id)
                ]
                if not ids:
                    continue
                # Still held (a PostgreSQL lock can go with its connection), just before.
                for upload_id in ids:
                    await self.db.confirm(upload_key(upload_id))
                deleting = self.db.delete_uploads_if_stale(upload_cutoff, ids)
                for position in await self._paced(deleting):
                    await self.store.abort(ids[position])
                    self.report.uploads.append(ids[position])
        sessions = await self.db.upload_ids()
        async for stored in self.store.list_uploads():
            if stored.name not in sessions and stored.modified < upload_cutoff:
                async with contextlib.AsyncExitStack() as locks:
                    if await self._hold_upload(locks, stored.name):
                        await self.db.confirm(upload_key(stored.name))
                        await self.store.abort(stored.name)
                        self.report.uploads.append(stored.name)

    async def _hold_upload(self, locks: contextlib.AsyncExitStack, upload_id: str) -> bool:
        """Take the upload's lock into `locks` unless a request holds it; whether it was taken."""
        if not await locks.enter_async_context(
            self.db.exclusive(upload_key(upload_id), wait=False)
        ):
            log.info("gc: upload %s is being written: kept", upload_id)
            return False
        return True


async def free_unlinked_blobs(
    db: MetadataDB, store: BlobStore, digests: list[str], *, cutoff: float
) -> dict[str, int]:
    """Delete at once, by the blob deletion protocol, those of `digests` that no manifest
    references, no repository links, and nothing uploaded, mounted or linked since `cutoff`
    (what evicting a proxied image leaves behind); the sizes of the blobs deleted."""
    marked = await db.unlinked_blobs_among(cutoff, digests)
    page = sorted(marked)
    if not page:
        return {}
    trashed = [parse_digest(d) for d in page]
    await store.move_to_trash(trashed)
    try:
        deleted = set(await db.delete_unlinked_blobs(cutoff, page))
    except BaseException:
        await store.restore_from_trash(trashed)
        raise
    await store.empty_trash([trashed[i] for i in sorted(deleted)])
    saved = [d for i, d in enumerate(trashed) if i not in deleted]
    if saved:
        await store.restore_from_trash(saved)
    return {page[i]: marked[page[i]] for i in sorted(deleted)}


async def _simulate(
    db: MetadataDB,
    store: BlobStore,
    cutoff: float,
    upload_cutoff: float,
    delete_untagged: bool,
) -> GCReport:
    """What a real run would remove now: the same rules, cascade included, in one snapshot."""
    report = GCReport(dry_run=True)
    simulated = await db.simulate_collection(cutoff, upload_cutoff, delete_untagged=delete_untagged)
    report.manifests = list(simulated.manifests)
    for digest, size in simulated.blobs:
        report.blobs.append(digest)
        report.bytes_freed += size
    report.uploads = list(simulated.uploads)
    trashed = [digest async for digest in store.list_trash()]
    known = await db.known_among([str(d) for d in trashed])
    report.orphan_files += [str(d) for d in trashed if str(d) not in known]
    batch: list[StoredObject] = []

    async def orphan_batch() -> None:
        known = await db.known_among([s.name for s in batch])
        for stored in batch:
            if stored.name not in known:
                report.orphan_files.append(stored.name)
                report.bytes_freed += stored.size

    async for stored in store.list_blobs():
        if stored.modified < cutoff:
            batch.append(stored)
        if len(batch) >= ORPHAN_BATCH:
            await orphan_batch()
            batch = []
    await orphan_batch()
    sessions = await db.upload_ids()
    async for stored in store.list_uploads():
        if stored.name not in sessions and stored.modified < upload_cutoff:
            report.uploads.append(stored.name)
    return report
