"""The events outbox in SQLite (`storage.metadata.outbox`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage.metadata.outbox import Backlog, Delivery, OutboxRow
from storage.metadata.sqlite.connection import SQLiteBase, write_outbox

_COLUMNS = (
    "id, endpoint, repository, type, body, created_at, attempts, next_attempt_at, state, last_error"
)


class SQLiteOutbox(SQLiteBase):
    """`OutboxRecords` on SQLite."""

    async def append_outbox(self, rows: Sequence[OutboxRow]) -> None:
        """Write events that report no stored change, in their own transaction."""
        if not rows:
            return
        async with self.transaction() as db:
            await write_outbox(db, rows)

    async def outbox_heads(self, limit: int) -> list[Delivery]:
        """The oldest pending row of each (endpoint, repository), soonest due first."""
        rows = await self._all(
            f"SELECT {_COLUMNS} FROM event_outbox WHERE id IN ("
            "  SELECT MIN(id) FROM event_outbox WHERE state = 'pending' "
            "  GROUP BY endpoint, repository"
            ") ORDER BY next_attempt_at, id LIMIT ?",
            (limit,),
        )
        return [_delivery(row) for row in rows]

    async def outbox_claim(self, delivery_id: int, *, now: float, until: float) -> bool:
        """Take a due pending row until `until`; whether this call took it."""
        async with self.transaction() as db:
            # One statement decides: the row must still be pending and due when the write lock
            # (PostgreSQL: the row's lock) is ours, so two senders can never both take it.
            cursor = await db.execute(
                "UPDATE event_outbox SET next_attempt_at = ? "
                "WHERE id = ? AND state = 'pending' AND next_attempt_at <= ?",
                (until, delivery_id, now),
            )
            return cursor.rowcount == 1

    async def outbox_delivered(self, delivery_id: int) -> None:
        """Forget a delivered row."""
        async with self.transaction() as db:
            await db.execute("DELETE FROM event_outbox WHERE id = ?", (delivery_id,))

    async def outbox_attempt_failed(
        self, delivery_id: int, *, attempts: int, next_attempt_at: float, error: str, give_up: bool
    ) -> None:
        """Record a failed try: due again at `next_attempt_at`, or given up (`failed`)."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE event_outbox SET attempts = ?, next_attempt_at = ?, last_error = ?, "
                "state = ? WHERE id = ?",
                (attempts, next_attempt_at, error, "failed" if give_up else "pending", delivery_id),
            )

    async def outbox_rows(
        self, *, state: str | None = None, endpoint: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        """Rows not yet delivered, oldest first, filtered."""
        where, args = [], []
        for column, value in (("state", state), ("endpoint", endpoint)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = await self._all(
            f"SELECT {_COLUMNS} FROM event_outbox {clause}ORDER BY id LIMIT ?", (*args, limit)
        )
        return [_delivery(row) for row in rows]

    async def outbox_counts(self) -> dict[str, int]:
        """How many rows are in each state."""
        rows = await self._all("SELECT state, COUNT(*) FROM event_outbox GROUP BY state")
        return {row[0]: int(row[1]) for row in rows}

    async def event_backlog(self) -> list[Backlog]:
        """Undelivered events per endpoint and state."""
        rows = await self._all(
            "SELECT endpoint, state, count(*), min(created_at), "
            "(SELECT o2.last_error FROM event_outbox o2 WHERE o2.endpoint = o.endpoint "
            " AND o2.state = o.state AND o2.last_error IS NOT NULL ORDER BY o2.id DESC LIMIT 1) "
            "FROM event_outbox o GROUP BY endpoint, state ORDER BY endpoint, state"
        )
        return [Backlog(r[0], r[1], int(r[2]), float(r[3]), r[4]) for r in rows]


def _delivery(row: Any) -> Delivery:
    return Delivery(
        row[0], row[1], row[2], row[3], bytes(row[4]), row[5], row[6], row[7], row[8], row[9]
    )
