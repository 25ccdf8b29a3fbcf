"""What a manifest change sets off besides storing it: the observers of the pipeline.

An observer may prepare a push from its bytes alone before its tag guard is taken (`before`: the
library traces the image's lineage, which may be slow), add to the change's own transaction
(`stage`: rows that must exist exactly when
the change does, such as the events outbox and a library tag's history) and acts once it is
committed (`after`). What it adds before the commit is all-or-nothing with the change: a failure
there refuses the change and stores nothing. What it does after the commit can no longer undo the
change, which the client is told was stored: each observer runs in its turn, guarded the same way
(`Observers.after`), so a failing one is logged and counted (`failures`, served at `/metrics`) and
the next one still runs.

The observers, in the order they run after the commit:

- `EvidenceCache`: forget the repository's remembered evidence version (pulls decide afresh).
- `EventSender`: wake the sender (the outbox rows were committed with the change).
- `DecisionLog`: count the allowed push, whose decision row it staged in the push's own
  transaction (a denied one was recorded when it was denied).
- `LibraryObserver`: a `signed_by` library tag follows its registry tag once signed; the image's
  lineage; images traced again after a library tag gained a digest.
- `SignatureProofs`: a pushed signature is verified (on the verification threads) and its proofs
  recorded, so pulls of the image it signs cost no cryptography.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from policies.gateway import PolicyGate, PushCheck
from policies.library.declaration import Library
from policies.library.history import TagMove
from policies.library.lineage import Lineage
from policies.library.recording import (
    end_deleted_tags,
    follow_pushed_tag,
    lineage_change,
    record_library_push,
    trace_lineage,
)
from policies.signatures.proofs import signature_pushed
from registry.events.hub import EventHub
from storage.blobstore import BlobStore
from storage.metadata import (
    DecisionRecord,
    LibraryChange,
    LibraryHistory,
    ManifestRecord,
    MetadataDB,
    OutboxRow,
    OutboxRows,
)

log = logging.getLogger("trustyard.pipeline")


@dataclass
class Change:
    """One manifest change going through the pipeline: a push (`check` set) or a delete."""

    action: Literal["push", "delete"]
    record: ManifestRecord
    actor: str
    tag: str | None = None  # the tag pushed or deleted; None: by digest
    tags: tuple[str, ...] = ()  # a delete by digest: the tags it removes with the manifest
    check: PushCheck | None = None  # a push: what the policy decided
    previous: str | None = None  # a push by tag: the digest the tag pointed at before
    #: Set by the store: the pushed tag's library history moved in its transaction.
    library_moved: bool = False
    #: Outbox rows staged with the change (none when no endpoint wants its events).
    outbox_rows: int = 0
    #: Outbox rows of the library tag move, as the last run of the change's write built them;
    #: added to `outbox_rows` only once that write committed having moved the tag (a
    #: PostgreSQL batch rolled back and run again builds them once per run).
    library_rows: int = 0
    #: A push: the image's lineage, traced before the tag guard and staged to be recorded in
    #: its own transaction (None: not traced, then traced and recorded after the commit).
    lineage: tuple[Lineage, ...] | None = None
    #: A push: the library history it is traced against (its store checks it is current).
    history: LibraryHistory | None = None

    @property
    def repository(self) -> str:
        """The repository changed."""
        return self.record.repository

    @property
    def digest(self) -> str:
        """The manifest pushed or deleted (or whose tag was)."""
        return self.record.digest


@dataclass
class Staged:
    """What the observers add to a change's transaction, as values the metadata interface
    writes in it: outbox rows, then library changes (in the order added)."""

    statements: list[OutboxRow] = field(default_factory=list)
    library: list[LibraryChange] = field(default_factory=list)
    #: The decision-log row of an allowed push.
    decisions: list[DecisionRecord] = field(default_factory=list)


class Observer(Protocol):
    """One concern a manifest change sets off."""

    #: The name failures are logged and counted under.
    name: str

    async def before(self, change: Change) -> None:
        """Prepare from the pushed bytes alone, before the tag guard is taken (the change has
        no policy check yet): what may be slow and does not depend on the tag."""

    async def stage(self, change: Change, staged: Staged) -> None:
        """Add to the change's transaction (under the tag guard; must be quick)."""

    async def after(self, change: Change) -> None:
        """Act once the change is committed (outside the tag guard)."""


class Observers:
    """The observers of every change, in order, and how many times each failed after a commit."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)
        #: Failures after a commit, by observer name (`trustyard_pipeline_observer_failures`).
        self.failures: dict[str, int] = {o.name: 0 for o in self.observers}

    async def before(self, change: Change) -> None:
        """Let every observer prepare a push before its tag guard is taken. A failure here
        propagates: nothing is decided or stored yet."""
        for observer in self.observers:
            await observer.before(change)

    async def stage(self, change: Change) -> Staged:
        """What every observer adds to the change's transaction. A failure here propagates:
        nothing is committed yet, so the change is refused whole."""
        staged = Staged()
        for observer in self.observers:
            await observer.stage(change, staged)
        return staged

    async def after(self, change: Change) -> None:
        """Let every observer act on the committed change, each guarded: a failure is logged and
        counted, never raised (the change is stored and was, or is about to be, acknowledged)."""
        for observer in self.observers:
            try:
                await observer.after(change)
            except Exception:
                self.failures[observer.name] = self.failures.get(observer.name, 0) + 1
                log.exception(
                    "after the %s of %s@%s: %s failed (the %s itself is stored)",
                    change.action,
                    change.repository,
                    change.digest,
                    observer.name,
                    change.action,
                )


class EvidenceCache:
    """Pull decisions are cached by the repository's evidence version, which the change bumped
    in its transaction: forget the remembered one."""

    name = "evidence_cache"

    def __init__(self, gate: PolicyGate) -> None:
        self.gate = gate

    async def before(self, change: Change) -> None:
        """Nothing before the guard."""

    async def stage(self, change: Change, staged: Staged) -> None:
        """Nothing: the evidence version is bumped by the store itself."""

    async def after(self, change: Change) -> None:
        """Forget the remembered evidence version."""
        self.gate.evidence_changed(change.repository)


class EventSender:
    """The change's events (`image.pushed`, `tag.deleted`, `manifest.deleted`, the deprecated
    `library.tag.updated` of `events.library_repositories`) are outbox rows of its own
    transaction; once committed, the sender is woken to deliver them."""

    name = "events"

    def __init__(self, events: EventHub) -> None:
        self.events = events

    async def before(self, change: Change) -> None:
        """Nothing before the guard."""

    async def stage(self, change: Change, staged: Staged) -> None:
        """The change's outbox rows."""
        if change.action == "push":
            rows = self.events.push_statements(
                change.record, change.tag, change.actor, change.previous
            )
        else:
            rows = self.events.delete_statements(
                change.record, change.tag, list(change.tags), change.actor
            )
        staged.statements.extend(rows)
        change.outbox_rows += len(rows)

    async def after(self, change: Change) -> None:
        """Wake the sender (when there is something for it: each wake reads the outbox)."""
        if change.outbox_rows:
            self.events.committed()


class DecisionLog:
    """An allowed push is recorded in its own transaction: a push the storage refused (a blob
    unknown) leaves no "allow" row, a stored one always has it. (Denials, and delete
    decisions, are recorded when decided.)"""

    name = "decision_log"

    def __init__(self, gate: PolicyGate) -> None:
        self.gate = gate

    async def before(self, change: Change) -> None:
        """Nothing before the guard."""

    async def stage(self, change: Change, staged: Staged) -> None:
        """The allowed push's decision row."""
        if change.check is not None:
            row = self.gate.push_decision(change.check)
            if row is not None:
                staged.decisions.append(row)

    async def after(self, change: Change) -> None:
        """Count the allowed push (metrics)."""
        if change.check is not None:
            self.gate.pushed(change.check)


class LibraryObserver:
    """The base-image library: a declared library tag's history follows its registry tag in the
    change's own transaction (`library.tag.updated` in the outbox as it moves; a deleted tag's
    history ends), and so does a pushed image's lineage (outside the library, whose pushes are
    traced after the commit: their tag history or signature may change the candidates); after
    the commit, a `signed_by` tag follows once signed, lineage is checked against the library
    (or traced and recorded), and the images built on a digest the library gained are traced
    again."""

    name = "library"

    def __init__(
        self, db: MetadataDB, store: BlobStore, gate: PolicyGate, events: EventHub
    ) -> None:
        self.db = db
        self.store = store
        self.gate = gate
        self.events = events

    async def stage(self, change: Change, staged: Staged) -> None:
        """The history move (or end) of a declared library tag, and a pushed image's lineage,
        on the change's transaction."""
        library = self._library(change)
        if change.action == "push":
            await self._stage_lineage(change, staged, library)
        if library is None:
            return
        if change.action == "delete":
            tags = (change.tag,) if change.tag is not None else change.tags
            staged.library.extend(end_deleted_tags(library, change.repository, tags))
            return
        rows = self.events.library_moved(change.actor)

        def announce(move: TagMove) -> OutboxRows:
            # Called inside the write job, once per run of it: set, never added up.
            statements = rows(move)
            change.library_rows = len(statements)
            return statements

        follow = follow_pushed_tag(library, change.repository, change.digest, change.tag, announce)
        if follow is not None:
            staged.library.append(follow)

    async def after(self, change: Change) -> None:
        """A `signed_by` tag, lineage, re-tracing (pushes only)."""
        library = self._library(change)
        if library is not None and library.image_at(change.repository) is not None:
            # This change may have moved the library's history (here, or by a `signed_by`
            # follow below): the next push reads it afresh rather than have its store find the
            # history moved (which it would: correct, one attempt later).
            self.gate.library_history.forget()
        if change.action != "push" or change.check is None:
            return
        if change.library_moved:
            log.info(
                "library tag of %s:%s now points to %s",
                change.repository,
                change.tag,
                change.digest,
            )
        rows = self.events.library_moved(change.actor)
        announced: list[int] = []

        def announce(move: TagMove) -> OutboxRows:
            statements = rows(move)
            announced.append(len(statements))
            return statements

        try:
            await record_library_push(
                self.db,
                self.store,
                change.check.policy.library,
                change.repository,
                change.digest,
                change.record.content,
                change.tag,
                announce,
                change.check.lineage if change.lineage is None else change.lineage,
                moved=change.library_moved,
                locks=self.gate,
                recorded=change.lineage is not None,
            )
        finally:
            # A `signed_by` tag moved here commits its `library.tag.updated` rows only now.
            if any(announced):
                self.events.committed()
            if library is not None and library.image_at(change.repository) is not None:
                self.gate.library_history.forget()

    async def before(self, change: Change) -> None:
        """Trace a push's lineage outside the library, before its tag guard (tracing reads the
        library's history and the image's configs, which may be slow, and does not depend on
        the tag). When that fails, the push is not refused for it: it is traced again after
        the commit."""
        library = self.gate.policy.library
        if change.action != "push" or (library is not None and library.image_at(change.repository)):
            return
        try:
            change.lineage = await trace_lineage(
                self.db,
                self.store,
                change.repository,
                change.digest,
                change.record.content,
                library,
                change.history,
            )
        except Exception:
            log.exception("tracing the lineage of %s@%s", change.repository, change.digest)

    async def _stage_lineage(self, change: Change, staged: Staged, library: Library | None) -> None:
        """The lineage of a push outside the library, as a change of its own transaction (a
        second commit per push otherwise): the decision's trace when a rule needed it, else
        the one traced `before`."""
        if change.check is None or (library is not None and library.image_at(change.repository)):
            change.lineage = None
            return
        if change.check.lineage is not None:
            change.lineage = change.check.lineage
        if change.lineage:
            staged.library.append(lineage_change(change.repository, change.digest, change.lineage))

    def _library(self, change: Change) -> Library | None:
        if change.check is not None:
            return change.check.policy.library
        return self.gate.policy.library


class SignatureProofs:
    """A pushed signature (`.sig` tag or signature referrer) is verified now, on the
    verification threads, and its proofs recorded: the repository's evidence version is bumped
    so quarantined images are decided afresh."""

    name = "signature_proofs"

    def __init__(self, db: MetadataDB, store: BlobStore, gate: PolicyGate) -> None:
        self.db = db
        self.store = store
        self.gate = gate

    async def before(self, change: Change) -> None:
        """Nothing before the guard."""

    async def stage(self, change: Change, staged: Staged) -> None:
        """Nothing: verification is slow, it never runs inside the tag guard."""

    async def after(self, change: Change) -> None:
        """Verify a pushed signature and record its proofs."""
        if change.action != "push" or change.check is None:
            return
        policy = change.check.policy
        content, tag = change.record.content, change.tag
        if await signature_pushed(self.db, self.store, policy, change.repository, content, tag):
            await self.gate.evidence_arrived(change.repository)


def default_observers(
    db: MetadataDB, store: BlobStore, gate: PolicyGate, events: EventHub
) -> Observers:
    """The registry's observers, in the order they act after a commit."""
    return Observers(
        [
            EvidenceCache(gate),
            EventSender(events),
            DecisionLog(gate),
            LibraryObserver(db, store, gate, events),
            SignatureProofs(db, store, gate),
        ]
    )
