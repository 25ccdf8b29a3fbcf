"""The policy decision log and evidence versions: what policy decided, and how many times what
it sees of a repository changed.

Rows: `policy_decisions`, `evidence_versions` (see `storage.layout`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass


def loggable(text: str) -> str:
    """`text` as the decision log keeps it: a NUL character written `\\0`. A decision quotes
    what a request carried (a reason may name an annotation's value), and a text with a NUL is
    refused by every statement (`storage.errors.TextNotStorable`): kept as it is, one such
    decision would fail the whole batch of the log it is written with, again at every retry."""
    return text.replace("\x00", "\\0")


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One row of the policy decision log (`repeats` identical decisions folded into one)."""

    time: float
    identity: str
    action: str
    repository: str
    reference: str
    digest: str
    outcome: str
    rule: str | None
    reason: str
    policy_version: str
    repeats: int = 1
    last_time: float = 0.0
    id: int = 0


class Decisions(ABC):
    """The decision log and the evidence versions policy caches are keyed by."""

    @abstractmethod
    async def evidence_version(self, repository: str) -> int:
        """How many times what policy sees of a repository changed (0 if never)."""

    @abstractmethod
    async def bump_evidence(self, repository: str) -> None:
        """Record that evidence about the repository arrived (a signature, a scan)."""

    @abstractmethod
    async def record_decisions(self, records: Iterable[DecisionRecord]) -> None:
        """Append decisions to the log, in one transaction."""

    @abstractmethod
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
        """Logged decisions, newest first, filtered (`since` by the last repeat, `until` by the
        first); `before_id` pages backwards."""

    @abstractmethod
    async def decision_counts(
        self, *, since: float, bucket: float, repository: str | None = None
    ) -> list[tuple[float, str, int]]:
        """Decisions per time bucket and outcome since `since` (repeats counted):
        (bucket start, outcome, count), oldest first."""
