"""Garbage collection: remove what nothing references, safely while the registry serves.

Mark and sweep over the metadata database, then the blob store:

1. manifests that no tag, no index and no living subject references (when `delete_untagged`),
   repeated until nothing more goes (an index going frees its children);
2. blobs that no manifest references, idle longer than the grace period; each is re-checked in
   the same write transaction that deletes its row, so a manifest pushed meanwhile keeps them;
3. blob files the database does not know (a crash between rename and commit), older than the
   grace period;
4. upload sessions, and upload files without a session, older than the stale-upload age.

A blob uploaded, mounted or referenced within the grace period is never collected.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from registry.grammar import parse_digest
from storage.blobstore import BlobStore
from storage.metadata import MetadataDB, record_gc_run

log = logging.getLogger(__name__)

#: Orphan blobs deleted per call to the store (S3's DeleteObjects takes at most 1000 keys).
ORPHAN_BATCH = 1000


@dataclass
class GCReport:
    """What a collection removed (or, in a dry run, would remove)."""

    manifests: list[tuple[str, str]] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    bytes_freed: int = 0

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


async def collect_garbage(
    db: MetadataDB,
    store: BlobStore,
    *,
    grace_period: float,
    stale_upload_age: float,
    delete_untagged: bool = True,
    dry_run: bool = False,
    now: float | None = None,
) -> GCReport:
    """Run one collection and report what went."""
    now = time.time() if now is None else now
    cutoff = now - grace_period
    report = GCReport()

    if delete_untagged:
        seen: set[tuple[str, str]] = set()
        while True:
            batch = [m for m in await db.unreferenced_manifests(cutoff) if m not in seen]
            if not batch:
                break
            seen.update(batch)
            report.manifests += batch
            if dry_run:
                break  # children freed by these are only found by a real run
            for repository, digest in batch:
                await db.delete_manifest(repository, digest)

    for digest in await db.unreferenced_blobs(cutoff):
        size = await db.blob_size(digest) or 0
        if dry_run or await db.forget_blob_if_unreferenced(digest, cutoff):
            if not dry_run:
                await store.delete(parse_digest(digest))
            report.blobs.append(digest)
            report.bytes_freed += size

    known = await db.known_blobs()
    orphans: list[str] = []
    async for stored in store.list_blobs():
        if stored.name not in known and stored.modified < cutoff:
            orphans.append(stored.name)
            report.orphan_files.append(stored.name)
            report.bytes_freed += stored.size
            # Deleted a batch at a time (one request per 1000 keys on S3), soon after listing.
            if len(orphans) == ORPHAN_BATCH and not dry_run:
                await store.delete_blobs([parse_digest(name) for name in orphans])
                orphans.clear()
    if orphans and not dry_run:
        await store.delete_blobs([parse_digest(name) for name in orphans])

    upload_cutoff = now - stale_upload_age
    stale = set(await db.uploads_started_before(upload_cutoff))
    sessions = await db.upload_ids()
    async for stored in store.list_uploads():
        if stored.name not in sessions and stored.modified < upload_cutoff:
            stale.add(stored.name)
    for upload_id in sorted(stale):
        if not dry_run:
            await store.abort(upload_id)
            await db.end_upload(upload_id)
        report.uploads.append(upload_id)
    for line in report.lines():
        log.info("gc%s: %s", " (dry run)" if dry_run else "", line)
    if not dry_run:
        await record_gc_run(db, now, report.summary())
    return report
