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
from policies.library.history import Announce, candidates, end_tag, record_tag
from policies.library.images import platform_images
from policies.library.lineage import Lineage, find_lineage
from policies.library.signing import pending_candidates, signature_arrived, unsigned
from storage.blobstore import BlobStore
from storage.metadata import MetadataDB

log = logging.getLogger("trustyard.library")


async def trace_lineage(
    db: MetadataDB,
    store: BlobStore,
    repository: str,
    digest: str,
    content: bytes,
    library: Library | None = None,
) -> tuple[Lineage, ...]:
    """The lineage of every platform image of the manifest `content` pushed to `repository`.

    A library repository's own earlier digests are not its bases: they are left out. With the
    `library`, digests pending their `signed_by` signature are candidates too, marked pending.
    """
    images = await platform_images(db, store, repository, digest, content)
    if not images:
        return ()
    known = [
        c
        for c in [*await candidates(db, store), *await pending_candidates(db, store, library)]
        if c.repository != repository
    ]
    return find_lineage(images, known)


async def record_lineage(
    db: MetadataDB,
    repository: str,
    digest: str,
    lineages: Sequence[Lineage],
    now: float | None = None,
) -> None:
    """Store what each platform image of `repository@digest` is built on (replacing what was
    recorded before for the same manifest). A base pending its signature is no base yet: not
    recorded."""
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
        if lineage.base is not None and not lineage.base.pending
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
    announce: Announce | None = None,
    lineages: Sequence[Lineage] | None = None,
) -> None:
    """After a manifest was stored: record the tag history of a declared library tag (once
    signed, when the image asks `signed_by`; a pushed signature may be what it waited for;
    `announce` reports a move), then the image's lineage: `lineages` when the policy decision
    traced it already, unless the push was to a library repository (its tag history or a
    signature may have changed the candidates). Never raises: the push is stored already, and
    lineage is a report."""
    try:
        image = None if library is None else library.image_at(repository)
        if library is not None and image is not None and tag is not None and tag in image.tags:
            why = await unsigned(db, store, library, image, digest)
            if why is not None:
                log.info(
                    "library %s:%s stays put until %s is signed: %s", image.name, tag, digest, why
                )
            elif await record_tag(db, image.name, tag, repository, digest, announce=announce):
                log.info("library %s:%s now points to %s", image.name, tag, digest)
        if library is not None and image is not None:
            await signature_arrived(db, store, library, repository, content, tag, announce)
        if lineages is None or image is not None:
            lineages = await trace_lineage(db, store, repository, digest, content, library)
        if lineages:
            await record_lineage(db, repository, digest, lineages)
    except Exception:
        log.exception("recording the library lineage of %s@%s failed", repository, digest)


async def record_library_delete(
    db: MetadataDB, library: Library | None, repository: str, tags: Sequence[str]
) -> None:
    """After tags of `repository` were deleted (a tag, or a manifest with its tags): every
    declared library tag among them points at nothing from now on, so its history row ends and
    the images built on it are no longer on its current digest. Never raises: the delete is done.
    """
    image = None if library is None else library.image_at(repository)
    if image is None:
        return
    for tag in tags:
        if tag not in image.tags:
            continue
        try:
            await end_tag(db, image.name, tag)
            log.info("library %s:%s deleted", image.name, tag)
        except Exception:
            log.exception("ending the history of library tag %s:%s failed", image.name, tag)
