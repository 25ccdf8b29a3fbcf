"""Housekeeping: what garbage collection deletes (its rules are written once, in
`storage.gc_rules`), the record of its runs, and the readiness probe.

Rows: `gc_runs`; the deletions touch `manifests`, `blobs` and `uploads` (see `storage.layout`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass
class Simulation:
    """What a garbage collection would delete now (`gc --dry-run`), the cascade followed."""

    manifests: list[tuple[str, str]] = field(default_factory=list)  # (repository, digest)
    blobs: list[tuple[str, int]] = field(default_factory=list)  # (digest, size)
    uploads: list[str] = field(default_factory=list)  # stale upload sessions


class GCRun(NamedTuple):
    """One finished garbage collection."""

    started_at: float
    finished_at: float
    summary: dict[str, int]


class Housekeeping(ABC):
    """Garbage collection's marks and re-decided deletions, its runs, and a liveness probe.

    Marks are reads without any lock. Each deletion re-decides its candidate by the same rule
    inside the write transaction, so a tag, index, referrer, push or upload that appeared since
    the mark saves it.
    """

    @abstractmethod
    async def ping(self) -> None:
        """Raise unless the database answers a query."""

    @abstractmethod
    async def collectable_manifests(
        self, cutoff: float, after: tuple[str, str], limit: int
    ) -> list[tuple[str, str]]:
        """(repository, digest) of manifests garbage collection may delete (last pushed before
        `cutoff`), in key order after `after`, at most `limit`."""

    @abstractmethod
    async def delete_manifests_if_collectable(
        self, cutoff: float, manifests: Sequence[tuple[str, str]]
    ) -> list[int]:
        """Delete each (repository, digest) that is still collectable, in one transaction
        (references and tags go with it; each deletion bumps its repository's evidence); the
        positions of those deleted."""

    @abstractmethod
    async def collectable_blobs(
        self, cutoff: float, after: str, limit: int
    ) -> list[tuple[str, int]]:
        """(digest, size) of blobs garbage collection may delete, in digest order after
        `after`, at most `limit`."""

    @abstractmethod
    async def delete_blobs_if_collectable(self, cutoff: float, digests: Sequence[str]) -> list[int]:
        """Delete the record of each blob that is still collectable, in one transaction (its
        repository links go with it); the positions of those deleted."""

    @abstractmethod
    async def unlinked_blobs_among(self, cutoff: float, digests: Sequence[str]) -> dict[str, int]:
        """The sizes of those of `digests` that garbage collection may delete (by `cutoff`) and
        that no repository links."""

    @abstractmethod
    async def delete_unlinked_blobs(self, cutoff: float, digests: Sequence[str]) -> list[int]:
        """Delete the record of each blob that is still collectable and that no repository
        links, in one transaction; the positions of those deleted."""

    @abstractmethod
    async def delete_uploads_if_stale(self, cutoff: float, upload_ids: Sequence[str]) -> list[int]:
        """Forget each upload session still started before `cutoff`, in one transaction; the
        positions of those forgotten."""

    @abstractmethod
    async def simulate_collection(
        self, cutoff: float, upload_cutoff: float, *, delete_untagged: bool
    ) -> Simulation:
        """What a collection would delete now, by the same rules in one consistent view, the
        cascade followed (a manifest whose index goes may go too); nothing is written."""

    @abstractmethod
    async def record_gc_run(self, started: float, finished: float, summary: dict[str, int]) -> None:
        """Remember a garbage collection (a row a run: runs are rare)."""

    @abstractmethod
    async def gc_run_totals(self) -> tuple[int, float]:
        """How many garbage collections ran on this registry, and when the last one ended
        (0: never)."""

    @abstractmethod
    async def last_gc_run(self) -> GCRun | None:
        """The latest garbage collection, or None if none ran."""
