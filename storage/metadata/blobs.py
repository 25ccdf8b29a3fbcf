"""Blobs and upload sessions: which blobs are committed, which repository links them, and which
uploads are in progress.

Rows: `blobs`, `repository_blobs`, `uploads` (see `storage.layout`). The bytes themselves are in
the blob store (`storage.blobstore`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence


class BlobsAndUploads(ABC):
    """Blob records, repository links and upload sessions."""

    @abstractmethod
    async def blob_in_repository(self, repository: str, digest: str) -> int | None:
        """The size of a blob the repository links, or None."""

    @abstractmethod
    async def blob_size(self, digest: str) -> int | None:
        """The size of a committed blob, whichever repository links it, or None."""

    @abstractmethod
    async def blob_sizes(self, digests: Sequence[str]) -> dict[str, int]:
        """The sizes of the committed blobs among `digests` (any number of them)."""

    @abstractmethod
    async def known_among(self, digests: Sequence[str]) -> set[str]:
        """Which of `digests` the database records as blobs."""

    @abstractmethod
    async def blob_count(self) -> int:
        """How many blobs are recorded."""

    @abstractmethod
    async def blobs_after(self, after: str, limit: int) -> list[tuple[str, int]]:
        """(digest, size) of recorded blobs in digest order after `after`, at most `limit`."""

    @abstractmethod
    async def link_blob(self, repository: str, digest: str, size: int) -> None:
        """Record a committed blob and link it into a repository."""

    @abstractmethod
    async def mount_blob(self, repository: str, source: str, digest: str) -> int | None:
        """Link a blob that `source` links into `repository`; its size, or None if not there."""

    @abstractmethod
    async def unlink_blob(self, repository: str, digest: str, evidence: int | None = None) -> bool:
        """Remove a blob from a repository (the bytes stay until GC); whether it was linked.
        With `evidence`, only while the repository is still at that evidence version, checked in
        the transaction (else `RepositoryChanged`, nothing removed)."""

    @abstractmethod
    async def start_upload(self, upload_id: str, repository: str) -> None:
        """Record a new upload session."""

    @abstractmethod
    async def upload_repository(self, upload_id: str) -> str | None:
        """The repository an upload session belongs to, or None if there is no such session."""

    @abstractmethod
    async def end_upload(self, upload_id: str) -> None:
        """Forget an upload session (finished or cancelled)."""

    @abstractmethod
    async def uploads_started_before(self, cutoff: float) -> list[str]:
        """Upload sessions older than `cutoff` (epoch seconds)."""

    @abstractmethod
    async def upload_ids(self) -> set[str]:
        """Every upload session the database knows."""
