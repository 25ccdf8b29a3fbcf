"""The events outbox: events waiting for delivery, one row per (event, interested endpoint).

Rows: `event_outbox` (see `storage.layout`). A change that reports itself hands its `OutboxRow`s
to the write that stores it (`put_manifest`, `delete_tag`, a library tag's move), so an event
exists exactly when its change does, crash or not.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An event for one endpoint, to be written to the outbox (pending, due at once)."""

    endpoint: str
    repository: str
    type: str
    body: bytes  # the exact bytes sent (and signed)
    created_at: float


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


class Backlog(NamedTuple):
    """Undelivered events of one endpoint in one state."""

    endpoint: str
    state: str
    count: int
    oldest: float  # when the oldest row was created
    last_error: str | None  # the newest row's last error


class OutboxRecords(ABC):
    """The rows of the events outbox, for the sender and the deliveries API."""

    @abstractmethod
    async def append_outbox(self, rows: Sequence[OutboxRow]) -> None:
        """Write events that report no stored change (pulls, denials) in their own
        transaction."""

    @abstractmethod
    async def outbox_heads(self, limit: int) -> list[Delivery]:
        """The oldest pending row of each (endpoint, repository), soonest due first: delivery
        stays in order per repository and one stuck repository never holds up another."""

    @abstractmethod
    async def outbox_claim(self, delivery_id: int, *, now: float, until: float) -> bool:
        """Take a pending row that is due for delivery until `until` (its `next_attempt_at`
        moves there, so every other sender sees it not yet due); whether it was taken. Of
        several processes claiming one row, exactly one gets it; a sender that dies holding it
        leaves it due again at `until`."""

    @abstractmethod
    async def outbox_delivered(self, delivery_id: int) -> None:
        """Forget a delivered row."""

    @abstractmethod
    async def outbox_attempt_failed(
        self, delivery_id: int, *, attempts: int, next_attempt_at: float, error: str, give_up: bool
    ) -> None:
        """Record a failed try: due again at `next_attempt_at`, or given up (`failed`)."""

    @abstractmethod
    async def outbox_rows(
        self, *, state: str | None = None, endpoint: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        """Rows not yet delivered, oldest first, filtered."""

    @abstractmethod
    async def outbox_counts(self) -> dict[str, int]:
        """How many rows are in each state (states without rows are absent)."""

    @abstractmethod
    async def event_backlog(self) -> list[Backlog]:
        """Undelivered events per endpoint and state, by endpoint then state."""
