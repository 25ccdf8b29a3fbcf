"""What a manifest push records about the library, and the lineage fact the `base_image` rule
reads.

After a push is stored: a declared library tag gets its tag history row, and the pushed image
gets its lineage (one `image_lineage` row per platform image built on a library image). Both are
cheap: the library's manifests and configs are remembered by digest (`policies.library.images`),
so a push reads one small table and its own config.

An image pushed before its base entered the library (or before a `signed_by` base was signed)
has no base yet: it is remembered in `images_without_base` by the first layer of each platform.
When a library tag's history gains a digest (a push, an import, a signature that moves a pending
tag), the images remembered under that digest's first layers are traced again, after the move's
transaction and at most `RETRACE_LIMIT` per move.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from policies.library.declaration import Library
from policies.library.history import (
    Announce,
    TagLocks,
    candidates,
    tag_history,
)
from policies.library.images import platform_images
from policies.library.lineage import Candidate, ImageLayers, Lineage, find_lineage
from policies.library.signing import (
    follow_tag,
    pending_candidates,
    signature_arrived,
    unsigned,
)
from storage.blobstore import BlobStore
from storage.metadata import (
    EndLibraryTag,
    FollowLibraryTag,
    LibraryHistory,
    LineageRow,
    MetadataDB,
    RecordLineage,
)

log = logging.getLogger("trustyard.library")

#: Images re-traced, at most, when a library tag gains a digest; more are logged, and traced
#: when they are pushed again.
RETRACE_LIMIT = 200

#: Times an image's lineage is recorded again when the library moved while it was traced.
LINEAGE_ATTEMPTS = 3


async def lineage_candidates(
    db: MetadataDB,
    store: BlobStore,
    library: Library | None,
    history: LibraryHistory | None = None,
) -> list[Candidate]:
    """Every library candidate: each digest of each library tag's history (`history`, default:
    read now), and (with the `library`) the digests pending their `signed_by` signature,
    marked pending."""
    return [
        *await candidates(db, store, history),
        *await pending_candidates(db, store, library, history),
    ]


async def trace_lineage(
    db: MetadataDB,
    store: BlobStore,
    repository: str,
    digest: str,
    content: bytes,
    library: Library | None = None,
    history: LibraryHistory | None = None,
) -> tuple[Lineage, ...]:
    """The lineage of every platform image of the manifest `content` pushed to `repository`,
    against the library's `history` (default: read now; a push passes the one its store
    checks is still current, `HistoryCache`).

    A library repository's own earlier digests are not its bases: they are left out. With the
    `library`, digests pending their `signed_by` signature are candidates too, marked pending.
    """
    images = await platform_images(db, store, repository, digest, content)
    if not images:
        return ()
    known = [
        c
        for c in await lineage_candidates(db, store, library, history)
        if c.repository != repository
    ]
    return find_lineage(images, known)


def first_layers(images: Sequence[ImageLayers]) -> set[str]:
    """The first non-empty diff_id and layer digest of each platform image: what an image built
    on it starts with, however its layers were compressed."""
    return {
        chain[0]
        for image in images
        for chain in (image.chain(by_diff_ids=True), image.chain(by_diff_ids=False))
        if chain
    }


def lineage_change(repository: str, digest: str, lineages: Sequence[Lineage]) -> RecordLineage:
    """What `repository@digest` is recorded to be built on, as a change of a registry write
    (`put_manifest`, or `record_lineage`'s own). A base pending its signature is no base yet:
    not recorded. An image with no base at all is remembered by its first layers, to be traced
    again when a library tag gains a digest it may be built on (`retrace_after_move`)."""
    bases = tuple(
        LineageRow(
            platform=lineage.platform or "",
            library_name=lineage.base.name,
            library_tag=lineage.base.tag,
            base_digest=lineage.base.digest,
            current=lineage.base.current,
            shared_layers=lineage.shared,
        )
        for lineage in lineages
        if lineage.base is not None and not lineage.base.pending
    )
    layers = () if bases else tuple(sorted(first_layers([lineage.image for lineage in lineages])))
    return RecordLineage(repository, digest, bases, layers)


async def record_lineage(
    db: MetadataDB,
    repository: str,
    digest: str,
    lineages: Sequence[Lineage],
    now: float | None = None,
) -> None:
    """Store what each platform image of `repository@digest` is built on (replacing what was
    recorded before for the same manifest), in a write of its own (`lineage_change`)."""
    now = time.time() if now is None else now
    change = lineage_change(repository, digest, lineages)
    await db.record_lineage(repository, digest, change.bases, change.first_layers, now)


async def record_current_lineage(
    db: MetadataDB,
    store: BlobStore,
    library: Library | None,
    repository: str,
    digest: str,
    content: bytes,
    lineages: Sequence[Lineage],
    *,
    recorded: bool = False,
) -> None:
    """`record_lineage`, then make sure the `current` flags it wrote still hold; nothing when
    `recorded` already, in the push's own transaction, whose store checked that the library's
    history was still the one traced (`put_manifest(library_generation=...)`): its flags were
    true at that commit, and a later move flips them in its own transaction.

    Lineage is traced from the library's history as it was read, before the write that records
    it: a library tag may move in between (its transaction flips the flags of the rows recorded
    so far, not of one written after). Read after the write, a history that disagrees with a
    flag means such a move came first: the image is traced again and recorded afresh (a move
    after the write flipped the row itself). At most `LINEAGE_ATTEMPTS` tries; a tag moving
    faster than that is logged."""
    if recorded:
        return
    for attempt in range(1, LINEAGE_ATTEMPTS + 1):
        await record_lineage(db, repository, digest, lineages)
        bases = [
            lineage.base
            for lineage in lineages
            if lineage.base is not None and not lineage.base.pending
        ]
        if not bases:
            return  # no flag written (an image without a base is traced when the library moves)
        current = {(h.name, h.tag): h.digest for h in await tag_history(db) if h.current}
        if all(
            base.current == (current.get((base.name, base.tag)) == base.digest) for base in bases
        ):
            return
        if attempt < LINEAGE_ATTEMPTS:
            lineages = await trace_lineage(db, store, repository, digest, content, library)
    log.warning(
        "%s@%s: the library moved while its lineage was recorded, %d times; its current flags "
        "are refreshed by the next move or push",
        repository,
        digest,
        LINEAGE_ATTEMPTS,
    )


async def retrace_after_move(
    db: MetadataDB,
    store: BlobStore,
    library: Library | None,
    repository: str,
    digest: str,
    limit: int | None = None,
) -> int:
    """A library tag of `repository` gained `digest`: trace again the images that had no base
    and start with one of its first layers, recording those now built on a library image; how
    many were recorded. At most `limit` (`RETRACE_LIMIT`) images are traced; the rest are
    logged. Runs after the move's transaction: reads, then one short write per image found."""
    limit = RETRACE_LIMIT if limit is None else limit
    record = await db.get_manifest(repository, digest)
    if record is None:
        return 0
    layers = sorted(
        first_layers(await platform_images(db, store, repository, digest, record.content))
    )
    if not layers:
        return 0
    found = await db.images_without_base(layers, repository, limit + 1)
    if len(found) > limit:
        log.warning(
            "%s@%s: more than %d images without a base may be built on it; traced the first %d, "
            "the others are traced when pushed again",
            repository,
            digest,
            limit,
            limit,
        )
    known = await lineage_candidates(db, store, library)
    recorded = 0
    for image_repository, image_digest in found[:limit]:
        image = await db.get_manifest(image_repository, image_digest)
        if image is None:  # deleted since: nothing to trace
            await db.forget_image_without_base(image_repository, image_digest)
            continue
        images = await platform_images(db, store, image_repository, image_digest, image.content)
        lineages = find_lineage(images, [c for c in known if c.repository != image_repository])
        if any(lineage.base is not None and not lineage.base.pending for lineage in lineages):
            await record_current_lineage(
                db, store, library, image_repository, image_digest, image.content, lineages
            )
            recorded += 1
    if recorded:
        log.info("%s@%s: lineage recorded for %d earlier images", repository, digest, recorded)
    return recorded


def follow_pushed_tag(
    library: Library | None,
    repository: str,
    digest: str,
    tag: str | None,
    announce: Announce | None = None,
) -> FollowLibraryTag | None:
    """What the push's own transaction changes of the library: a declared library tag of an
    image that asks no signature follows the registry tag (its history, its `announce`d move),
    so the two never disagree, crash or not. None when nothing follows. A `signed_by` image's
    tag follows only once signed, after the commit (`record_library_push`)."""
    image = None if library is None else library.image_at(repository)
    if image is None or tag is None or tag not in image.tags or image.signed_by:
        return None
    return FollowLibraryTag(image.name, tag, repository, digest, announce)


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
    *,
    moved: bool = False,
    locks: TagLocks | None = None,
    recorded: bool = False,
) -> None:
    """After a manifest was stored (`moved`: its library tag's history moved in the same
    transaction, `move_pushed_tag`): the tag history of a declared library tag whose image asks
    `signed_by`, once signed (a pushed signature may be what it waited for; verified first, then
    moved under the registry tag's lock (`locks`) only if the tag still points there; `announce`
    reports a move), then the image's lineage: `lineages` when the policy decision traced it
    already, unless the push was to a library repository (its tag history or a signature may
    have changed the candidates). A digest the library gained has the images pushed before it
    traced again (`retrace_after_move`). `recorded`: the push's own transaction recorded the
    `lineages` (`lineage_change`), which are only checked against the library here. Runs
    after the commit, outside the tag guard: a failure is the caller's to log (the push is
    stored; lineage is a report)."""
    image = None if library is None else library.image_at(repository)
    gained: list[str] = [digest] if moved else []
    if library is not None and image is not None and image.signed_by and tag in image.tags:
        why = await unsigned(db, store, library, image, digest)
        if why is not None:
            log.info("library %s:%s stays put until %s is signed: %s", image.name, tag, digest, why)
        elif await follow_tag(db, image.name, tag, repository, digest, announce, locks):
            log.info("library %s:%s now points to %s", image.name, tag, digest)
            gained.append(digest)
    if library is not None and image is not None:
        gained += await signature_arrived(
            db, store, library, repository, content, tag, announce, locks
        )
    if lineages is None or image is not None:
        lineages = await trace_lineage(db, store, repository, digest, content, library)
        recorded = False
    if lineages:
        await record_current_lineage(
            db, store, library, repository, digest, content, lineages, recorded=recorded
        )
    for gain in dict.fromkeys(gained):
        await retrace_after_move(db, store, library, repository, gain)


def end_deleted_tags(
    library: Library | None, repository: str, tags: Sequence[str]
) -> list[EndLibraryTag]:
    """What the delete's own transaction changes of the library: every declared library tag
    among the deleted `tags` of `repository` points at nothing from now on, so its history row
    ends and the images built on it are no longer on its current digest."""
    image = None if library is None else library.image_at(repository)
    if image is None:
        return []
    return [EndLibraryTag(image.name, tag) for tag in tags if tag in image.tags]
