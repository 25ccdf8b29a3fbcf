"""A manifest push, from bytes to stored: the order and the transaction.

1. Read: the reference (a tag in the spec's grammar, or the digest the bytes must have), the
   size limit, the verification limits of a signature the policy would verify, the parse (in a
   thread for a large manifest).
2. Outside the tag guard: what the observers prepare from the bytes alone (the image's
   lineage, `Observers.before`).
3. Under the tag guard (pushes to one tag one after the other in this process): the policy
   check (a denial is logged and reported at once, and nothing is stored), then one
   transaction storing the manifest, moving the tag, and writing what the observers stage with
   it (the events outbox, a library tag's history, the image's lineage, the allowed push's
   decision row). Nothing slow runs here. Across processes, a decision that read the tag (an
   immutable tag) is its store's premise: the transaction re-reads the tag under the
   database's write lock and, when another process moved it since, stores nothing and the push
   is decided again (`TAG_ATTEMPTS`), so of two racing pushes to a new immutable tag exactly
   one is stored, without a lock of the database held (and paid for in round trips) from the
   check to the commit. A declared library tag takes that lock as well (`tag_guard`).
4. After the commit, outside the guard: the observers (`registry.pipeline.observers`), each
   guarded: one failing is logged and counted, never an error for a push that is stored.

A manifest that arrives by other means than an HTTP PUT (a pull-through cache) goes through
`push_manifest` too: the same checks, the same observers.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from policies.decisions import Action
from policies.engine import Policy
from policies.facts import PolicyRequest
from policies.gateway import PolicyGate, PushCheck
from policies.signatures.proofs import push_problem
from registry.events.hub import EventHub
from registry.pipeline.observers import Change, Observers
from storage.metadata import (
    LibraryMoved,
    ManifestRecord,
    MetadataDB,
    MissingReferences,
    TagMoved,
    TagPremise,
)
from storage.oci.digests import Digest, parse_digest
from storage.oci.errors import (
    DIGEST_INVALID,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_TOO_LARGE,
    TOOMANYREQUESTS,
    OciError,
)
from storage.oci.grammar import check_tag, is_digest
from storage.oci.manifest import MAX_MANIFEST_SIZE, ParsedManifest, Reference, parse_manifest

#: Manifests larger than this are parsed in a thread (a typical image manifest is a few KiB).
LARGE_MANIFEST = 64 * 1024

#: Times a push is decided again when other processes keep moving its tag between its check
#: and its commit (then it is refused: 429, retry; nothing stored).
TAG_ATTEMPTS = 5

log = logging.getLogger("trustyard.pipeline")


@dataclass(frozen=True)
class ManifestPush:
    """A manifest to store in `repository` under `reference` (a tag, or its digest)."""

    repository: str
    reference: str
    content: bytes
    content_type: str | None  # the media type the pusher declared, if any
    actor: str  # who pushes: in the decision log and the events
    #: Pulled through the proxy (`registry.proxy`): what it references need not be here yet (it
    #: is fetched when asked for); the references still protect their targets from GC.
    references_fetched_later: bool = False


@dataclass(frozen=True)
class Stored:
    """A manifest the pipeline stored (and tagged, when pushed by tag)."""

    repository: str
    digest: str
    subject: str | None  # the manifest's `subject`, if it has one
    #: The policy's headers for the answer (a `Warning` in warn mode).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """A push read and validated, not yet decided."""

    push: ManifestPush
    tag: str | None
    digest: Digest
    parsed: ParsedManifest

    def record(self) -> ManifestRecord:
        """The row to store."""
        return ManifestRecord(
            repository=self.push.repository,
            digest=str(self.digest),
            media_type=self.parsed.media_type,
            content=self.push.content,
            subject=self.parsed.subject,
            artifact_type=self.parsed.artifact_type,
            annotations=self.parsed.annotations,
        )


async def prepare(push: ManifestPush, policy: Policy) -> Prepared:
    """Read and validate a push: TAG_INVALID, DIGEST_INVALID, MANIFEST_INVALID (413 past the size
    limit) say what is wrong."""
    content = push.content
    tag, expected = read_reference(push.reference)
    if len(content) > MAX_MANIFEST_SIZE:
        raise too_large(len(content))
    digest = Digest.of(content, expected.algorithm if expected else "sha256")
    if expected is not None and digest != expected:
        raise OciError(
            DIGEST_INVALID,
            {"expected": str(expected), "actual": str(digest)},
            message="manifest digest did not match the digest in the URL",
        )
    args = (content, push.content_type, policy, tag, str(digest))
    if len(content) > LARGE_MANIFEST:
        # Reading a large manifest is CPU work: in a thread, the event loop keeps answering
        # other clients between its steps instead of stalling for the whole parse.
        parsed = await asyncio.to_thread(_parse, *args)
    else:
        parsed = _parse(*args)
    return Prepared(push, tag, digest, parsed)


def read_reference(reference: str) -> tuple[str | None, Digest | None]:
    """The tag, or the digest the manifest must have, that a push names; TAG_INVALID or
    DIGEST_INVALID when it is outside the spec's grammar."""
    if is_digest(reference):
        return None, parse_digest(reference)
    return check_tag(reference), None


def too_large(size: int) -> OciError:
    """MANIFEST_INVALID (413): a manifest of `size` bytes is over the limit."""
    return OciError(
        MANIFEST_TOO_LARGE,
        {"size": size, "limit": MAX_MANIFEST_SIZE},
        message=f"manifest larger than the {MAX_MANIFEST_SIZE} byte limit",
    )


def _parse(
    content: bytes, content_type: str | None, policy: Policy, tag: str | None, digest: str
) -> ParsedManifest:
    """Validate a pushed manifest; a signature the policy would verify is refused up front when
    it is over the verification limits."""
    # The limits first: a hostile signature manifest is refused without the full parse.
    problem = push_problem(policy, content, tag)
    if problem is not None:
        raise OciError(MANIFEST_INVALID, {"digest": digest}, message=problem)
    return parse_manifest(content, content_type)


async def push_manifest(
    db: MetadataDB, gate: PolicyGate, events: EventHub, observers: Observers, push: ManifestPush
) -> Stored:
    """Check, store and observe one manifest push (see the module's docstring for the order).
    Raises `PolicyDenied` or `OciError` (MANIFEST_BLOB_UNKNOWN, ...) when nothing was stored; once
    stored, returns whatever the observers do."""
    prepared = await prepare(push, gate.policy)
    name, tag = push.repository, prepared.tag
    library = gate.policy.library
    image = None if library is None else library.image_at(name)
    # A declared library tag keeps the database's tag lock: its `signed_by` follow reads the
    # registry tag and moves the library's in two steps, under that lock.
    across = image is not None and tag in image.tags
    # What the observers prepare from the bytes alone (the image's lineage, against the library
    # history this process last read: the store checks it is still current), outside the guard.
    early = Change(
        "push",
        prepared.record(),
        push.actor,
        tag=tag,
        history=await gate.library_history.snapshot(db),
    )
    await observers.before(early)
    # A tag a rule reads is first assumed new (as pushed tags almost always are): the store
    # checks it, and on a tag found elsewhere the push is decided again on what it found. (A
    # push holding the tag's database lock reads it under that lock, as its follow does.)
    assumed: dict[str, str | None] | None = None if tag is None or across else {tag: None}
    async with gate.tag_guard(name, tag, across_processes=across):
        for attempt in range(1, TAG_ATTEMPTS + 1):
            try:
                change, check = await _check_and_store(
                    db, gate, events, observers, prepared, early, assumed
                )
                break
            except TagMoved as moved:
                # The tag points elsewhere than the decision took it to: decided afresh on
                # what the store found.
                assumed = {moved.tag: moved.found}
                log.log(
                    logging.DEBUG if attempt == 1 else logging.INFO,
                    "%s:%s points to %s, not where a push was decided on (attempt %d of %d)",
                    name,
                    tag,
                    moved.found,
                    attempt,
                    TAG_ATTEMPTS,
                )
            except LibraryMoved as moved:
                # A library tag moved since the history this push was traced against was read:
                # traced and decided afresh against the history as it is now.
                log.info(
                    "%s@%s: the library moved (generation %d, traced at %d); tracing again",
                    name,
                    prepared.digest,
                    moved.found,
                    moved.expected,
                )
                early.history = await gate.library_history.refresh(db)
                early.lineage = None
                await observers.before(early)
        else:
            raise OciError(
                TOOMANYREQUESTS,
                {"name": name, "reference": push.reference},
                message=f"tag {tag} keeps being moved by other pushes while this one is "
                "decided; nothing was stored, try again",
            )
    await observers.after(change)
    return Stored(name, str(prepared.digest), prepared.parsed.subject, check.headers)


async def _check_and_store(
    db: MetadataDB,
    gate: PolicyGate,
    events: EventHub,
    observers: Observers,
    prepared: Prepared,
    early: Change,
    assumed: dict[str, str | None] | None,
) -> tuple[Change, PushCheck]:
    """Under the tag guard: the policy check (on the `assumed` tag targets and the history
    `early` was traced against), then one transaction storing what the observers stage with
    it; `TagMoved` when the tag points elsewhere than the check took it to, `LibraryMoved`
    when the library's history moved since it was read (nothing stored)."""
    push, name, tag = prepared.push, prepared.push.repository, prepared.tag
    digest = str(prepared.digest)
    # Checked before anything is stored: a denied push leaves no manifest and no tag, and
    # its denial is logged (and reported) at once.
    async with events.reporting_denials("push", name, push.reference, digest, push.actor):
        check = await gate.check_push(
            PolicyRequest(
                Action.PUSH, name, push.reference, digest, () if tag is None else (tag,), push.actor
            ),
            prepared.parsed.media_type,
            push.content,
            assumed_targets=assumed,
            history=early.history,
            decoded=prepared.parsed.document,
        )
    change = Change(
        "push",
        early.record,
        push.actor,
        tag=tag,
        check=check,
        lineage=early.lineage,
        history=early.history,
    )
    premise = None
    if tag is not None and check.tag_targets is not None:
        # The decision read the tag: the store moves it only if it still points there.
        premise = TagPremise(check.tag_targets.get(tag))
    if tag is not None and events.is_library(name, check.policy.library):
        # The deprecated `events.library_repositories`: reports the digest the tag left.
        if premise is None:
            premise = TagPremise(await db.tag_target(name, tag))
        change.previous = premise.digest
    staged = await observers.stage(change)
    # What the decision or the lineage staged was traced against: stored only while current.
    generation = check.library_generation
    if generation is None and change.lineage is not None and early.history is not None:
        generation = early.history.generation
    # A tag's lock in the database must still be this process's (a PostgreSQL lock connection
    # can drop while the check ran): else refused, never committed unguarded.
    await gate.confirm_tags(name, (tag,))
    references = prepared.parsed.references
    if push.references_fetched_later:
        references = [Reference(r.digest, r.kind, required=False) for r in references]
    try:
        moved = await db.put_manifest(
            change.record,
            references,
            tag,
            staged.statements,
            staged.library,
            staged.decisions,
            premise,
            generation,
        )
    except MissingReferences as exc:
        missing = exc.missing[0]
        raise OciError(
            MANIFEST_BLOB_UNKNOWN,
            {"digest": missing.digest, "missing": [ref.digest for ref in exc.missing]},
            message=f"manifest references {missing.kind} {missing.digest} unknown to "
            f"repository {name}",
        ) from None
    change.library_moved = bool(moved)
    if change.library_moved:
        change.outbox_rows += change.library_rows  # what the committed run staged
    return change, check
