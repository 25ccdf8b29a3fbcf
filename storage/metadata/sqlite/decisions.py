"""The decision log and evidence versions in SQLite (`storage.metadata.decisions`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from storage.metadata.decisions import DecisionRecord, loggable
from storage.metadata.sqlite.connection import SQLiteBase, bump_evidence


async def write_decisions(db: Any, records: Iterable[DecisionRecord]) -> None:
    """Append decisions to the log inside the caller's transaction."""
    rows = [
        (
            r.time,
            r.last_time or r.time,
            r.repeats,
            loggable(r.identity),
            loggable(r.action),
            loggable(r.repository),
            loggable(r.reference),
            loggable(r.digest),
            loggable(r.outcome),
            None if r.rule is None else loggable(r.rule),
            loggable(r.reason),
            loggable(r.policy_version),
        )
        for r in records
    ]
    if rows:
        await db.executemany(
            "INSERT INTO policy_decisions (time, last_time, repeats, identity, action, "
            "repository, reference, digest, outcome, rule, reason, policy_version) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


class SQLiteDecisions(SQLiteBase):
    """`Decisions` on SQLite."""

    async def evidence_version(self, repository: str) -> int:
        """How many times what policy sees of a repository changed (0 if never)."""
        row = await self._one(
            "SELECT version FROM evidence_versions WHERE repository = ?", (repository,)
        )
        return 0 if row is None else int(row[0])

    async def bump_evidence(self, repository: str) -> None:
        """Record that evidence about the repository arrived (a signature, a scan)."""

        async def bump(db: Any) -> None:
            await bump_evidence(db, repository)

        # A write job: committed together with the pushes of the moment (group commit).
        await self.write(bump)

    async def record_decisions(self, records: Iterable[DecisionRecord]) -> None:
        """Append decisions to the log, in one transaction."""
        records = list(records)
        if not records:
            return

        async def append(db: Any) -> None:
            await write_decisions(db, records)

        # A write job: committed together with the writes of the moment (group commit).
        await self.write(append)

    async def list_decisions(
        self,
        *,
        repository: str | None = None,
        outcome: str | None = None,
        action: str | None = None,
        since: float | None = None,
        before_id: int | None = None,
        limit: int = 100,
        rule: str | None = None,
        identity: str | None = None,
        until: float | None = None,
    ) -> list[DecisionRecord]:
        """Logged decisions, newest first, filtered; `before_id` pages backwards."""
        where, args = [], []
        for column, value in (
            ("repository", repository),
            ("outcome", outcome),
            ("action", action),
            ("rule", rule),
            ("identity", identity),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("last_time >= ?")
            args.append(since)
        if until is not None:
            where.append("time < ?")
            args.append(until)
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = await self._all(
            "SELECT id, time, last_time, repeats, identity, action, repository, reference, digest, "
            f"outcome, rule, reason, policy_version FROM policy_decisions {clause}"
            "ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
        return [
            DecisionRecord(
                id=row[0],
                time=row[1],
                last_time=row[2],
                repeats=row[3],
                identity=row[4],
                action=row[5],
                repository=row[6],
                reference=row[7],
                digest=row[8],
                outcome=row[9],
                rule=row[10],
                reason=row[11],
                policy_version=row[12],
            )
            for row in rows
        ]

    async def decision_counts(
        self, *, since: float, bucket: float, repository: str | None = None
    ) -> list[tuple[float, str, int]]:
        """Decisions per time bucket and outcome since `since` (repeats counted)."""
        clause, args = "", [since]
        if repository is not None:
            clause = "AND repository = ? "
            args.append(repository)
        rows = await self._all(
            "SELECT CAST((time - ?) / ? AS INTEGER), outcome, sum(repeats) FROM policy_decisions "
            f"WHERE time >= ? {clause}GROUP BY 1, 2 ORDER BY 1, 2",
            (since, bucket, *args),
        )
        return [(since + int(row[0]) * bucket, row[1], int(row[2])) for row in rows]
