"""The small interface every blob backend implements (filesystem now, S3 next).

A backend only moves bytes: it knows nothing of repositories, manifests or policy. Uploads are
append-only byte streams named by an upload id; `commit` makes one visible under its content
address atomically, after the caller has verified the digest. Above this interface nothing knows
which backend runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from storage.oci.digests import Digest


@dataclass(frozen=True)
class StoredObject:
    """A blob or upload found while walking a backend, with its age for garbage collection."""

    name: str
    size: int
    modified: float


class BlobStore(Protocol):
    """Content-addressed blob storage with append-only uploads."""

    async def start_upload(self, upload_id: str, *, resumable: bool = True) -> None:
        """Create an empty upload. One that is not `resumable` is finished (or dropped) by the
        request that starts it: a backend may keep its record in memory until then."""

    async def upload_size(self, upload_id: str) -> int | None:
        """Bytes received so far for an upload, or None if it does not exist."""

    async def append(self, upload_id: str, data: bytes) -> None:
        """Append `data` to an upload (called from the event loop; must not block it). The
        bytes may stay in memory until `flush`."""

    async def flush(self, upload_id: str) -> None:
        """Make every byte appended so far durable; `upload_size` counts only flushed bytes
        (and whatever else is already durable). Called before a request is acknowledged."""

    async def drop_pending(self, upload_id: str) -> None:
        """Forget what this process holds of an upload beyond what is durable (a request that
        failed) and release its memory; the durable bytes stay."""

    async def cut_upload(self, upload_id: str, size: int) -> None:
        """After `drop_pending`, for a request that failed while its caller still holds the
        upload: cut the upload back to its first `size` bytes (where that request found it),
        so what the request wrote after them is gone for good. Never called with fewer bytes
        than were acknowledged, nor once the upload was placed as a blob (no error if the
        upload does not exist)."""

    def read_upload(self, upload_id: str) -> AsyncIterator[bytes]:
        """The bytes of an upload so far, in order (to rebuild a hash after a restart)."""

    async def commit(self, upload_id: str, digest: Digest) -> None:
        """Make a verified upload visible as blob `digest`, atomically; the upload is gone after.

        Callers that record the blob in the database use `storage.blob_commit.commit_blob`
        instead, which keeps the upload until the record is made (see docs/architecture.md)."""

    async def place(self, upload_id: str, digest: Digest) -> None:
        """Make a verified upload visible as blob `digest`, atomically, replacing whatever bytes
        were stored under that name (which repairs a damaged blob); the upload stays."""

    async def verify_size(self, digest: Digest, size: int) -> None:
        """Raise `BlobDamaged` unless the stored blob holds exactly `size` bytes (a cheap check:
        one stat on disk, one HEAD on S3), before any byte of it is served."""

    async def quarantine(self, digest: Digest) -> None:
        """Move a corrupt blob out of service to the quarantine (`trustyard fsck`)."""

    async def move_to_trash(self, digests: list[Digest]) -> None:
        """Garbage collection, step 1: move blobs out of their address to their trash place
        (reversibly; missing ones are skipped)."""

    async def restore_from_trash(self, digests: list[Digest]) -> None:
        """Put trashed blobs back where their address is empty; drop their trash copies."""

    async def empty_trash(self, digests: list[Digest]) -> None:
        """Delete the trash copies of blobs for good."""

    def list_trash(self) -> AsyncIterator[Digest]:
        """Every blob in the trash (left there by a collection that stopped half way)."""

    async def abort(self, upload_id: str) -> None:
        """Drop an upload and its bytes (no error if it does not exist)."""

    async def size(self, digest: Digest) -> int | None:
        """The size of a committed blob, or None if the store does not hold it."""

    def local_path(self, digest: Digest) -> Path | None:
        """A local file holding the blob, for zero-copy serving, if the backend has one."""

    async def redirect_url(self, digest: Digest) -> str | None:
        """A URL the client may fetch the blob from directly, if the backend offers one."""

    def read(self, digest: Digest, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes from `start` up to `end` (exclusive; None for the end; fewer when
        the blob is shorter: callers may read a head with a cap)."""

    async def delete(self, digest: Digest) -> None:
        """Remove a committed blob (no error if it does not exist)."""

    async def delete_blobs(self, digests: list[Digest]) -> None:
        """Remove many committed blobs (in as few requests as the backend allows)."""

    def list_blobs(self) -> AsyncIterator[StoredObject]:
        """Every committed blob (`name` is the digest string)."""

    def list_uploads(self) -> AsyncIterator[StoredObject]:
        """Every upload in progress (`name` is the upload id)."""

    async def close(self) -> None:
        """Release the backend's resources."""
