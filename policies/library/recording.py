"""What a manifest push records about the library, and the lineage fact the `base_image` rule
reads.

After a push is stored: a declared library tag gets its tag history row, and the pushed image
gets its lineage (one `image_lineage` row per platform image built on a library image). Both are
cheap: the library's manifests and configs are remembered by digest (`policies.library.images`),
so a push reads one small table and its own config.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from policies.library.declaration import Library
from policies.library.history import candidates, record_tag
from policies.library.images import platform_images
from policies.library.lineage import Lineage, find_lineage
from storage.blobstore import BlobStore
from storage.metadata import MetadataDB

log = logging.getLogger("trustyard.library")


async def trace_lineage(
    db: MetadataDB, store: BlobStore, repository: str, digest: str, content: bytes
) -> tuple[Lineage, ...]:
    """The lineage of every platform image of the manifest `content` pushed to `repository`.

    A library repository's own earlier digests are not its bases: they are left out.
    """
    images = await platform_images(db, store, repository, digest, content)
    if not images:
        return ()
    known = [c for c in await candidates(db, store) if c.repository != repository]
    return find_lineage(images, known)


async def record_lineage(
    db: MetadataDB,
    repository: str,
    digest: str,
    lineages: Sequence[Lineage],
    now: float | None = None,
) -> None:
    """Store what each platform image of `repository@digest` is built on (replacing what was
    recorded before for the same manifest)."""
    now = time.time() if now is None else now
    rows = [
        (
            repository,
            digest,
            lineage.platform or "",
            lineage.base.name,
            lineage.base.tag,
            lineage.base.digest,
            int(lineage.base.current),
            lineage.shared,
            now,
        )
        for lineage in lineages
        if lineage.base is not None
    ]
    async with db.transaction() as conn:
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


async def record_library_push(
    db: MetadataDB,
    store: BlobStore,
    library: Library | None,
    repository: str,
    digest: str,
    content: bytes,
    tag: str | None,
) -> None:
    """After a manifest was stored: record the tag history of a declared library tag, then the
    image's lineage. Never raises: the push is stored already, and lineage is a report."""
    try:
        if library is not None and tag is not None:
            image = library.image_at(repository)
            moved = image is not None and tag in image.tags
            if moved and image and await record_tag(db, image.name, tag, repository, digest):
                log.info("library %s:%s now points to %s", image.name, tag, digest)
        lineages = await trace_lineage(db, store, repository, digest, content)
        if lineages:
            await record_lineage(db, repository, digest, lineages)
    except Exception:
        log.exception("recording the library lineage of %s@%s failed", repository, digest)
