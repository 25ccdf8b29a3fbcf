"""A manifest or tag delete: the same order and the same observers as a push.

Under the guard of every tag it removes: the policy check (a denial is logged and reported at
once), the check that no manifest the policy protects needs an index child, then one transaction
deleting it with what the observers stage (the outbox rows of `tag.deleted` or
`manifest.deleted`, the end of a declared library tag's history). After the commit, the
observers, each guarded.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from policies.decisions import Action
from policies.facts import PolicyRequest
from policies.gateway import PolicyGate
from registry.events.hub import EventHub
from registry.pipeline.observers import Change, Observers
from storage.metadata import ManifestRecord, MetadataDB, RepositoryChanged
from storage.oci.errors import BLOB_UNKNOWN, MANIFEST_UNKNOWN, TOOMANYREQUESTS, OciError

#: Times a delete by digest is decided again when the repository changed while it was decided
#: (tags pushed onto the manifest, a release listing it) (then it refuses: 429, retry).
MAX_ROUNDS = 3


@dataclass(frozen=True)
class ManifestDelete:
    """Delete `digest` (with every tag pointing at it) or only `tag` from `repository`."""

    repository: str
    reference: str  # as the client named it: in the decision log and the events
    actor: str
    digest: str | None = None
    tag: str | None = None


@dataclass(frozen=True)
class Deleted:
    """A delete the pipeline committed."""

    headers: dict[str, str] = field(default_factory=dict)  # the policy's (a `Warning`)


async def delete_manifest(
    db: MetadataDB,
    gate: PolicyGate,
    events: EventHub,
    observers: Observers,
    delete: ManifestDelete,
) -> Deleted:
    """Check, delete and observe; MANIFEST_UNKNOWN when there is nothing to delete, DENIED when
    the policy refuses (nothing deleted either way)."""
    name, tag, digest = delete.repository, delete.tag, delete.digest
    if digest is not None:
        record = await db.get_manifest(name, digest)
    else:
        assert tag is not None
        record = await db.get_tagged_manifest(name, tag)
    if record is None:
        raise OciError(MANIFEST_UNKNOWN, {"name": name, "reference": delete.reference})
    tags = (tag,) if tag is not None else tuple(await db.tags_of(name, record.digest))
    for _ in range(MAX_ROUNDS):
        async with _holding(gate, name, tags):
            evidence = None
            if digest is not None:
                # Read before anything the decision reads: a push (which waits for no guard
                # of ours) tagging the manifest or listing it in a release after this moves
                # it, and the delete's transaction then refuses (`RepositoryChanged`).
                evidence = await db.evidence_version(name)
                # A tag pushed onto the manifest while the guards were taken would go with it
                # unchecked (an immutable release deleted as it is tagged): hold it too, and
                # decide on the tags the manifest has now.
                now = tuple(await db.tags_of(name, record.digest))
                if not set(now) <= set(tags):
                    tags = tuple(sorted({*tags, *now}))
                    continue
                tags = now
            try:
                change, headers = await _delete(
                    db, gate, events, observers, delete, record, tags, evidence
                )
            except RepositoryChanged:
                continue  # decided again on what the repository holds now
            break
    else:
        raise OciError(
            TOOMANYREQUESTS,
            {"name": name, "reference": delete.reference},
            message=f"{name} keeps changing while {record.digest} is deleted; retry",
        )
    await observers.after(change)
    return Deleted(headers)


@contextlib.asynccontextmanager
async def _holding(gate: PolicyGate, repository: str, tags: tuple[str, ...]) -> AsyncIterator[None]:
    """Hold the guard of every tag, taken in one order (two deletes never wait on each other)."""
    async with contextlib.AsyncExitStack() as guards:
        for held in sorted(tags):
            await guards.enter_async_context(gate.tag_guard(repository, held))
        yield


async def _delete(
    db: MetadataDB,
    gate: PolicyGate,
    events: EventHub,
    observers: Observers,
    delete: ManifestDelete,
    record: ManifestRecord,
    tags: tuple[str, ...],
    evidence: int | None,
) -> tuple[Change, dict[str, str]]:
    """Under the guards: the policy check, then the delete with what the observers stage (by
    digest: only while the repository is at the `evidence` version the check read)."""
    name, tag, digest = delete.repository, delete.tag, delete.digest
    async with events.reporting_denials(
        "delete", name, delete.reference, record.digest, delete.actor
    ):
        headers = await gate.check_delete(
            PolicyRequest(Action.DELETE, name, delete.reference, record.digest, tags, delete.actor),
            record,
        )
    if digest is not None:
        # An index child goes only if no manifest the policy protects needs it.
        await gate.check_needed(name, digest, "manifest", delete.actor)
    change = Change("delete", record, delete.actor, tag=tag, tags=() if tag is not None else tags)
    staged = await observers.stage(change)
    await gate.confirm_tags(name, tags)
    if digest is not None:
        deleted = await db.delete_manifest(
            name, digest, staged.statements, staged.library, evidence=evidence
        )
    else:
        assert tag is not None
        # Only while it points at the manifest decided on: a push by another process does not
        # wait for this delete's lock of the tag (it re-checks the tag in its own transaction).
        deleted = await db.delete_tag(
            name, tag, staged.statements, staged.library, digest=record.digest
        )
    if not deleted:  # deleted (or the tag moved) by someone else meanwhile
        raise OciError(MANIFEST_UNKNOWN, {"name": name, "reference": delete.reference})
    return change, headers


async def delete_blob(
    db: MetadataDB, gate: PolicyGate, repository: str, digest: str, actor: str
) -> None:
    """Unlink a blob from `repository` unless a manifest the policy protects needs it (DENIED);
    BLOB_UNKNOWN when it is not linked there. The check and the unlink are one decision: a
    release made of the blob pushed in between (pushes wait for no lock of ours) is seen."""
    for _ in range(MAX_ROUNDS):
        evidence = await db.evidence_version(repository)
        await gate.check_needed(repository, digest, "blob", actor)
        try:
            unlinked = await db.unlink_blob(repository, digest, evidence)
        except RepositoryChanged:
            continue  # decided again on what the repository holds now
        if not unlinked:
            raise OciError(BLOB_UNKNOWN, {"digest": digest})
        return
    raise OciError(
        TOOMANYREQUESTS,
        {"name": repository, "digest": digest},
        message=f"{repository} keeps changing while blob {digest} is deleted; retry",
    )
