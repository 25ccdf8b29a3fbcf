"""The outbox: events waiting for delivery, as rows of `event_outbox` (see `storage.layout`).

One row per (event, interested endpoint). Rows describing a change are written by statements the
change's own transaction runs (`statements`), so an event exists exactly when its change does,
crash or not; other events (pulls, denials) are appended in a transaction of their own. The
sender takes, for each (endpoint, repository), the oldest pending row: that is what keeps
delivery in order per repository, and one repository's stuck event never holds up another's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from registry.events.cloudevents import Event
from registry.events.settings import EventSettings
from storage.metadata import MetadataDB, Statements

_INSERT = (
    "INSERT INTO event_outbox (endpoint, repository, type, body, created_at, next_attempt_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row: an event on its way to one endpoint."""

    id: int
    endpoint: str
    repository: str
    type: str
    body: bytes
    created_at: float
    attempts: int
    next_attempt_at: float
    state: str
    last_error: str | None

    def as_json(self) -> dict[str, Any]:
        """The row as the deliveries API shows it (the body's event id, not the body)."""
        try:
            event_id = json.loads(self.body).get("id")
        except ValueError:
            event_id = None
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "repository": self.repository,
            "type": self.type,
            "event_id": event_id,
            "state": self.state,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
        }


_COLUMNS = (
    "id, endpoint, repository, type, body, created_at, attempts, next_attempt_at, state, last_error"
)


def _delivery(row: Any) -> Delivery:
    return Delivery(
        row[0], row[1], row[2], row[3], bytes(row[4]), row[5], row[6], row[7], row[8], row[9]
    )


class Outbox:
    """Writes events to the outbox and gives the sender what is due."""

    def __init__(self, db: MetadataDB, settings: EventSettings) -> None:
        self.db = db
        self.settings = settings
        self.wakeup = asyncio.Event()
        #: Failed delivery attempts since start (for /metrics).
        self.failed_attempts = 0

    def statements(self, events: Iterable[Event]) -> Statements:
        """INSERTs putting `events` in the outbox, for the transaction of the change they report
        (nothing when no endpoint wants them)."""
        rows = []
        for event in events:
            body = event.body(self.settings.source)
            for endpoint in self.settings.endpoints:
                if endpoint.wants(event.kind):
                    rows.append(
                        (
                            _INSERT,
                            (endpoint.name, event.repository, event.type, body, event.time, 0.0),
                        )
                    )
        return rows

    async def append(self, events: Iterable[Event]) -> None:
        """Write events that report no stored change (pulls, denials) in their own transaction."""
        rows = self.statements(events)
        if not rows:
            return
        async with self.db.transaction() as db:
            for sql, args in rows:
                await db.execute(sql, args)
        self.notify()

    def notify(self) -> None:
        """Wake the sender: rows were committed."""
        self.wakeup.set()

    async def heads(self, limit: int = 256) -> list[Delivery]:
        """The oldest pending row of each (endpoint, repository), soonest due first."""
        rows = await self.db.read(
            f"SELECT {_COLUMNS} FROM event_outbox WHERE id IN ("
            "  SELECT MIN(id) FROM event_outbox WHERE state = 'pending' "
            "  GROUP BY endpoint, repository"
            ") ORDER BY next_attempt_at, id LIMIT ?",
            (limit,),
        )
        return [_delivery(row) for row in rows]

    async def delivered(self, delivery_id: int) -> None:
        """Forget a delivered row."""
        async with self.db.transaction() as db:
            await db.execute("DELETE FROM event_outbox WHERE id = ?", (delivery_id,))

    async def failed_attempt(
        self, delivery: Delivery, error: str, *, give_up: bool, now: float | None = None
    ) -> None:
        """Record a failed try: retry after the backoff, or give the row up (`failed`)."""
        now = time.time() if now is None else now
        self.failed_attempts += 1
        attempts = delivery.attempts + 1
        async with self.db.transaction() as db:
            await db.execute(
                "UPDATE event_outbox SET attempts = ?, next_attempt_at = ?, last_error = ?, "
                "state = ? WHERE id = ?",
                (
                    attempts,
                    now + self.settings.backoff(attempts),
                    error[:500],
                    "failed" if give_up else "pending",
                    delivery.id,
                ),
            )

    async def list(
        self, *, state: str | None = None, endpoint: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        """Rows not yet delivered, oldest first, filtered."""
        where, args = [], []
        for column, value in (("state", state), ("endpoint", endpoint)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = await self.db.read(
            f"SELECT {_COLUMNS} FROM event_outbox {clause}ORDER BY id LIMIT ?", (*args, limit)
        )
        return [_delivery(row) for row in rows]

    async def counts(self) -> dict[str, int]:
        """How many rows are pending and failed."""
        rows = await self.db.read("SELECT state, COUNT(*) FROM event_outbox GROUP BY state")
        return {"pending": 0, "failed": 0, **{row[0]: row[1] for row in rows}}
