"""`signed_by`: a library tag moves to a new digest only once that digest is signed.

```yaml
trust:
  keys:
    docker-official: {pem_file: docker-official.pub}
library:
  images:
    - name: python
      tags: ["3.12-slim"]
      signed_by: [docker-official]
```

Images are pushed first and signed right after (cosign needs the manifest in the registry), so a
push to a library tag cannot wait for its signature. The push is stored and the registry tag
moves, but the library does not follow: the tag's history (what the library calls current, what
lineage compares images with, what `stale` counts from) moves to the digest only when one of
`signed_by` has signed it, at the push when its signature is already there, else when the
signature is pushed. Until then the digest is *pending*: `GET /api/v1/library` shows it, the
images built on the old digest are not asked to rebuild on an unsigned one, and `base_image`
refuses an image built on the pending digest, saying it is not signed.

Signatures are verified by `policies.signatures.proofs` under the policy's `trust:` section, and
recorded there like any other proof.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from policies.library.declaration import Library, LibraryImage
from policies.library.history import (
    Announce,
    DatabaseTagLocks,
    TagLocks,
    record_tag,
    tag_history,
)
from policies.library.images import platform_images
from policies.library.lineage import Candidate
from policies.signatures.discovery import signed_subject
from policies.signatures.findings import Finding
from policies.signatures.proofs import findings_for, recorded, verify_and_record
from policies.signatures.references import repository_of, signs_for
from storage.blobstore import BlobStore
from storage.errors import LockLost
from storage.metadata import LibraryHistory, MetadataDB

log = logging.getLogger("trustyard.library")


@dataclass(frozen=True, slots=True)
class Pending:
    """A library tag whose registry tag points at a digest not (yet) signed by `signed_by`."""

    name: str
    tag: str
    repository: str
    digest: str
    reason: str  # `not signed by docker-official (found no signature)`


def wanted(image: LibraryImage) -> str:
    """`docker-official`, `docker-official or ops`: who may sign the image, in words."""
    names = list(image.signed_by)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _verdict(image: LibraryImage, findings: list[Finding], repository: str) -> str | None:
    """None when a finding proves one of `signed_by` now, for this repository (a signature that
    signs a reference must name it, as the `signature` rule's default), else why not."""
    now = time.time()
    shown = []
    for f in findings:
        if not (f.valid and f.signer in image.signed_by):
            shown.append(f.describe())
        elif not f.counts_at(now):
            shown.append(f"by {f.signer} but expired")
        elif not signs_for(f, repository):
            assert f.docker_reference is not None
            shown.append(f"by {f.signer} but for repository {repository_of(f.docker_reference)}")
        else:
            return None
    found = "; ".join(dict.fromkeys(shown)) or "found no signature"
    return f"not signed by {wanted(image)} ({found})"


async def unsigned(
    db: MetadataDB,
    store: BlobStore,
    library: Library,
    image: LibraryImage,
    digest: str,
    *,
    fresh: bool = False,
) -> str | None:
    """Why library image `image` at `digest` is not signed as `signed_by` asks, or None when it
    is (or asks for no signature). `fresh` verifies again instead of reading recorded proofs."""
    if not image.signed_by:
        return None
    repository = library.repository(image.name)
    if fresh:
        findings = await verify_and_record(db, store, library.trust, repository, digest)
    else:
        findings = await findings_for(db, store, library.trust, repository, digest)
    return _verdict(image, findings, repository)


async def signature_arrived(
    db: MetadataDB,
    store: BlobStore,
    library: Library,
    repository: str,
    content: bytes,
    tag: str | None,
    announce: Announce | None = None,
    locks: TagLocks | None = None,
) -> list[str]:
    """After a manifest push to a library repository: when it is a signature of a digest that a
    declared tag points at and now holds `signed_by`, the library tag moves to that digest
    (`announce`d as it moves, under the registry tag's lock in `locks`, and only if the registry tag
    still points at the digest once the signature is verified). The digests the library gained:
    that one, or none."""
    image = library.image_at(repository)
    if image is None or not image.signed_by:
        return []
    subject = signed_subject(content, tag)
    if subject is None:
        return []
    tags = [t for t in await db.tags_of(repository, subject) if t in image.tags]
    if not tags or await unsigned(db, store, library, image, subject, fresh=True) is not None:
        return []
    gained = []
    for library_tag in tags:
        if await follow_tag(db, image.name, library_tag, repository, subject, announce, locks):
            log.info("library %s:%s now points to %s (signed)", image.name, library_tag, subject)
            gained = [subject]
    return gained


async def follow_tag(
    db: MetadataDB,
    name: str,
    tag: str,
    repository: str,
    digest: str,
    announce: Announce | None = None,
    locks: TagLocks | None = None,
) -> bool:
    """Move the library tag `name:tag` to `digest` after a verification that ran outside the
    registry tag's lock; whether it moved. Verifying takes time, and the registry tag may have
    moved meanwhile (a push racing the signature): under the lock (`locks`, by default taken on
    the database), the library follows only a registry tag that still points at `digest`, so it
    never goes back to a digest the registry tag has left. The lock is confirmed just before
    the move commits; one lost meanwhile (its PostgreSQL connection went, and another replica
    may have moved the registry tag) has the move decided once more under a fresh lock."""
    locks = DatabaseTagLocks(db) if locks is None else locks
    for attempt in range(2):
        try:
            async with locks.tag_guard(repository, tag):
                if await db.tag_target(repository, tag) != digest:
                    log.info("library %s:%s: the registry tag moved on from %s", name, tag, digest)
                    return False
                await locks.confirm_tags(repository, (tag,))
                return await record_tag(db, name, tag, repository, digest, announce=announce)
        except LockLost as exc:
            if attempt:
                raise
            log.warning("library %s:%s not moved: %s; deciding again", name, tag, exc)
    raise AssertionError("unreachable")


async def pending_tags(
    db: MetadataDB, library: Library | None, history: LibraryHistory | None = None
) -> list[Pending]:
    """Library tags (of images with `signed_by`) whose registry tag points elsewhere than their
    current library digest (in `history`, default: read now): pushed, not yet signed."""
    if library is None:
        return []
    entries = await tag_history(db) if history is None else history.entries
    current = {(h.name, h.tag): h.digest for h in entries if h.current}
    found = []
    for image in library.images:
        if not image.signed_by:
            continue
        repository = library.repository(image.name)
        for tag in image.tags:
            target = await db.tag_target(repository, tag)
            if target is None or target == current.get((image.name, tag)):
                continue
            reason = await _recorded_reason(db, library, image, target)
            found.append(Pending(image.name, tag, repository, target, reason))
    return found


async def _recorded_reason(
    db: MetadataDB, library: Library, image: LibraryImage, digest: str
) -> str:
    """Why a pending digest is not signed, from recorded proofs only (reports verify nothing)."""
    repository = library.repository(image.name)
    findings = await recorded(db, library.trust, repository, digest)
    return _verdict(image, findings or [], repository) or f"not signed by {wanted(image)}"


async def pending_candidates(
    db: MetadataDB,
    store: BlobStore,
    library: Library | None,
    history: LibraryHistory | None = None,
) -> list[Candidate]:
    """The platform images of every pending digest, as lineage candidates marked `pending`: an
    image built on one is found, and refused for what it is built on."""
    found = []
    for pending in await pending_tags(db, library, history):
        record = await db.get_manifest(pending.repository, pending.digest)
        if record is None:
            continue
        for image in await platform_images(
            db, store, pending.repository, pending.digest, record.content
        ):
            found.append(
                Candidate(
                    pending.name,
                    pending.tag,
                    pending.repository,
                    pending.digest,
                    image,
                    current=False,
                    since=0.0,
                    pending=True,
                )
            )
    return found
