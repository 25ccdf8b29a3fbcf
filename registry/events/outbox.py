"""The outbox: events waiting for delivery, kept by the metadata interface
(`storage.metadata.outbox`).

One row per (event, interested endpoint). Rows describing a change are handed to the write that
stores the change (`rows`), so an event exists exactly when its change does, crash or not;
other events (pulls, denials) are appended in a transaction of their own. The sender takes, for
each (endpoint, repository), the oldest pending row: that is what keeps delivery in order per
repository, and one repository's stuck event never holds up another's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from registry.events.cloudevents import Event
from registry.events.settings import EventSettings
from storage.metadata import Delivery, MetadataDB, OutboxRow

__all__ = ["Delivery", "Outbox"]


class Outbox:
    """Writes events to the outbox and gives the sender what is due."""

    def __init__(self, db: MetadataDB, settings: EventSettings) -> None:
        self.db = db
        self.settings = settings
        self.wakeup = asyncio.Event()
        #: Failed delivery attempts since start (for /metrics).
        self.failed_attempts = 0

    def statements(self, events: Iterable[Event]) -> list[OutboxRow]:
        """The outbox rows of `events`, for the write of the change they report (nothing when
        no endpoint wants them)."""
        rows = []
        for event in events:
            body: bytes | None = None  # serialised once, and only for an endpoint wanting it
            for endpoint in self.settings.endpoints:
                if endpoint.wants(event.kind):
                    if body is None:
                        body = event.body(self.settings.source)
                    rows.append(
                        OutboxRow(endpoint.name, event.repository, event.type, body, event.time)
                    )
        return rows

    def wants(self, kind: str) -> bool:
        """Whether any endpoint receives events of `kind` (an event nobody wants is not built)."""
        return any(endpoint.wants(kind) for endpoint in self.settings.endpoints)

    async def append(self, events: Iterable[Event]) -> None:
        """Write events that report no stored change (pulls, denials) in their own transaction."""
        rows = self.statements(events)
        if not rows:
            return
        await self.db.append_outbox(rows)
        self.notify()

    def notify(self) -> None:
        """Wake the sender: rows were committed."""
        self.wakeup.set()

    async def heads(self, limit: int = 256) -> list[Delivery]:
        """The oldest pending row of each (endpoint, repository), soonest due first."""
        return await self.db.outbox_heads(limit)

    async def claim(self, delivery: Delivery, lease: float) -> bool:
        """Take a due row for `lease` seconds, so no other process sends it meanwhile; whether
        this process got it (False: another sender has it, or it was delivered already)."""
        now = time.time()
        return await self.db.outbox_claim(delivery.id, now=now, until=now + lease)

    async def delivered(self, delivery_id: int) -> None:
        """Forget a delivered row."""
        await self.db.outbox_delivered(delivery_id)

    async def failed_attempt(
        self, delivery: Delivery, error: str, *, give_up: bool, now: float | None = None
    ) -> None:
        """Record a failed try: retry after the backoff, or give the row up (`failed`)."""
        now = time.time() if now is None else now
        self.failed_attempts += 1
        attempts = delivery.attempts + 1
        await self.db.outbox_attempt_failed(
            delivery.id,
            attempts=attempts,
            next_attempt_at=now + self.settings.backoff(attempts),
            error=error[:500],
            give_up=give_up,
        )

    async def list(
        self, *, state: str | None = None, endpoint: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        """Rows not yet delivered, oldest first, filtered."""
        return await self.db.outbox_rows(state=state, endpoint=endpoint, limit=limit)

    async def counts(self) -> dict[str, int]:
        """How many rows are pending and failed."""
        return {"pending": 0, "failed": 0, **await self.db.outbox_counts()}
