"""What the registry's handlers call to report events: one `EventHub` per application, holding
the outbox, the sender and the pull reporter (`EVENTS` in the application)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from aiohttp import web

from policies.library.declaration import Library
from registry.errors import ANSWERABLE, spec_error
from registry.events.cloudevents import Event, manifest_data, subject
from registry.events.outbox import Outbox
from registry.events.pulls import PullReporter
from registry.events.sender import Sender
from registry.events.settings import EventSettings
from storage.metadata import Announce, LibraryMove, ManifestRecord, MetadataDB, OutboxRows
from storage.oci.errors import DENIED


class EventHub:
    """The events of one registry: outbox, sender, pulls."""

    def __init__(self, db: MetadataDB, settings: EventSettings) -> None:
        self.settings = settings
        self.outbox = Outbox(db, settings)
        self.sender = Sender(self.outbox, settings)
        self.pulls = PullReporter(self.outbox)

    def start(self, *, deliver: bool = True) -> None:
        """Start delivering (rows left by an earlier run go first) unless `deliver` is false
        (another worker process delivers), and reporting pulls."""
        if deliver:
            self.sender.start()
        self.pulls.start()

    async def close(self) -> None:
        """Stop; what is not delivered stays in the outbox."""
        await self.pulls.close()
        await self.sender.close()

    def is_library(self, repository: str, library: Library | None = None) -> bool:
        """Whether moving a tag of `repository` is reported at the push by the deprecated
        `events.library_repositories` globs: only outside the policy's `library:` namespace,
        whose declared tags are reported when their history moves (`library_moved`)."""
        if library is not None and library.in_namespace(repository):
            return False
        return self.settings.library is not None and self.settings.library.matches(repository)

    def library_moved(self, actor: str) -> Announce:
        """`library.tag.updated` rows for the transaction that moves a declared library tag's
        history (`MetadataDB.move_library_tag`): images built on the previous
        digest need a rebuild."""

        def rows(move: LibraryMove) -> OutboxRows:
            data = manifest_data(
                tag=move.tag,
                digest=move.digest,
                media_type=move.media_type,
                size=move.size,
                actor=actor,
                previous=move.previous,
                rebuild=True,
                library=f"{move.name}:{move.tag}",
            )
            where = subject(move.repository, move.tag, move.digest)
            return self.outbox.statements(
                [Event("library.tag.updated", move.repository, data, where)]
            )

        return rows

    def push_statements(
        self, record: ManifestRecord, tag: str | None, actor: str, previous: str | None = None
    ) -> OutboxRows:
        """Outbox rows for a manifest push, for the push's own transaction."""
        moved = tag is not None and previous is not None and previous != record.digest
        if not self.outbox.wants("image.pushed") and not (
            moved and self.outbox.wants("library.tag.updated")
        ):
            return []  # every push passes here: no event is built that no endpoint receives
        data = _record_data(record, tag, actor)
        where = subject(record.repository, tag, record.digest)
        events = [Event("image.pushed", record.repository, data, where)]
        if moved:
            events.append(
                Event(
                    "library.tag.updated",
                    record.repository,
                    {**data, "previous": previous, "rebuild": True},
                    where,
                )
            )
        return self.outbox.statements(events)

    def delete_statements(
        self, record: ManifestRecord, tag: str | None, tags: list[str], actor: str
    ) -> OutboxRows:
        """Outbox rows for deleting a tag (`tag`) or a manifest (with its `tags`)."""
        data = _record_data(record, tag, actor)
        if tag is not None:
            kind, where = "tag.deleted", subject(record.repository, tag, record.digest)
        else:
            kind, where = "manifest.deleted", subject(record.repository, None, record.digest)
            data["tags"] = tags
        return self.outbox.statements([Event(kind, record.repository, data, where)])

    def committed(self) -> None:
        """A change carrying outbox rows was committed: wake the sender."""
        self.outbox.notify()

    def reporting_denials(
        self, action: str, repository: str, reference: str, digest: str, actor: str
    ) -> DenialReport:
        """Send `policy.denied` when the policy check inside refuses the request."""
        return DenialReport(self.outbox, action, repository, reference, digest, actor)


class DenialReport:
    """`async with`: a DENIED refusal raised inside is reported as `policy.denied`, then raised
    on. (A class, not an `asynccontextmanager`: every push and pull enters one, and a generator
    based one costs several times as much on the event loop.)"""

    def __init__(
        self, outbox: Outbox, action: str, repository: str, reference: str, digest: str, actor: str
    ) -> None:
        self.outbox = outbox
        self.action = action
        self.repository = repository
        self.reference = reference
        self.digest = digest
        self.actor = actor

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if isinstance(exc, ANSWERABLE) and spec_error(exc).error is DENIED:
            data = {
                "action": self.action,
                "reference": self.reference,
                "digest": self.digest,
                "actor": self.actor,
                "reason": exc.message,
                "detail": exc.detail,
            }
            where = f"{self.repository}@{self.digest}"
            await self.outbox.append([Event("policy.denied", self.repository, data, where)])
        return False  # the refusal goes on to its caller


def _record_data(record: ManifestRecord, tag: str | None, actor: str) -> dict[str, Any]:
    """The `data` of an event about a stored manifest (pushed or deleted), seen through `tag`."""
    return manifest_data(
        tag=tag,
        digest=record.digest,
        media_type=record.media_type,
        size=record.size,
        actor=actor,
    )


EVENTS = web.AppKey("events", EventHub)
