"""What storage fails with, in its own words: no HTTP status, no spec error body.

`registry.errors` maps each of these to the spec's code and status (503 UNAVAILABLE, 507
STORAGE_FULL, 404 BLOB_UNKNOWN); everything below the HTTP floor only raises and catches them.
"""

from __future__ import annotations

from typing import Any

from storage.oci.digests import Digest
from storage.oci.errors import STORAGE_FULL, UNAVAILABLE


class StorageError(Exception):
    """A storage failure with a message a client can be shown and a detail saying where."""

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class StorageUnavailable(StorageError):
    """A backend's storage cannot be reached or failed (the client is answered UNAVAILABLE).

    Raised by remote backends (S3) instead of their client library's exceptions, after the
    failure was logged with whatever request id the storage service returned.
    """

    def __init__(self, detail: dict[str, object]) -> None:
        super().__init__(UNAVAILABLE.message, detail)


class StorageFull(StorageError):
    """The disk (or the database's disk) has no room (the client is answered STORAGE_FULL).

    Raised instead of `OSError(ENOSPC)` or SQLite's "database or disk is full", after whatever was
    half written was removed.
    """

    def __init__(self, where: str) -> None:
        super().__init__(
            f"{STORAGE_FULL.message} (no space left on the registry's {where})",
            {"reason": f"no space left on the registry's {where}"},
        )


class BlobDamaged(StorageError):
    """The stored bytes of a recorded blob are missing or of the wrong length.

    Answered BLOB_UNKNOWN with the reason, never a short body: a client that asks with HEAD
    before pushing then pushes the blob again, which repairs it.
    """

    def __init__(self, digest: Digest, expected: int, found: int | None) -> None:
        what = "missing" if found is None else f"{found} bytes instead of {expected}"
        super().__init__(
            f"blob {digest} is damaged in storage ({what}); push it again to repair it",
            {"digest": str(digest), "reason": f"stored blob is damaged ({what}); push it again"},
        )


class UploadMemoryExhausted(StorageError):
    """The part buffers of all S3 uploads of this process fill their memory budget
    (`storage.s3.upload_memory`) and none made room in time (the client is answered
    TOOMANYREQUESTS with `Retry-After`)."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(f"too many uploads at once: {reason}", {"reason": reason})
        self.headers = {"Retry-After": str(retry_after)}


class TextNotStorable(StorageError):
    """A value holds a NUL character: no name, tag or field of the metadata database holds one
    (PostgreSQL's text cannot carry it at all), so nothing is stored or looked up with it (the
    client is answered TEXT_INVALID, 400)."""

    def __init__(self) -> None:
        super().__init__(
            "a value holds a NUL character, which no name, tag or field can hold",
            {"reason": "NUL character in a value"},
        )


class LockLost(StorageError):
    """A lock shared by every process on the metadata database was dropped while held (its
    PostgreSQL connection was lost, so the server released it): whatever it guarded is refused
    before it is stored, since another process may now hold it (the client is answered
    UNAVAILABLE, 503, and may simply try again)."""

    def __init__(self, key: str, cause: str) -> None:
        what = key.split(" ", 1)[0]
        super().__init__(
            f"the registry lost its {what} lock in the metadata database ({cause}) before "
            "storing this change; nothing was stored, try again",
            {"reason": f"{what} lock lost: {cause}"},
        )
