"""The OCI Distribution Specification's error codes: each code and its message, named once.

A code is vocabulary, not an HTTP answer: the status each one is answered with lives in
`registry.errors`, the one place that turns a failure into the spec's error body. Parsers at
this floor (digests, names, manifests) raise `OciError` with a code and a detail saying what is
wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorCode:
    """One of the spec's error codes (as the spec spells it) and what it means."""

    code: str
    message: str


def _register(code: str, message: str) -> ErrorCode:
    entry = ErrorCode(code, message)
    ERROR_CODES[code] = entry
    return entry


#: Each spec code once, by its name (variants below share a code with another message).
ERROR_CODES: dict[str, ErrorCode] = {}

BLOB_UNKNOWN = _register("BLOB_UNKNOWN", "blob unknown to registry")
BLOB_UPLOAD_INVALID = _register("BLOB_UPLOAD_INVALID", "blob upload invalid")
BLOB_UPLOAD_UNKNOWN = _register("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
DIGEST_INVALID = _register("DIGEST_INVALID", "provided digest did not match uploaded content")
MANIFEST_BLOB_UNKNOWN = _register(
    "MANIFEST_BLOB_UNKNOWN", "manifest references a manifest or blob unknown to registry"
)
MANIFEST_INVALID = _register("MANIFEST_INVALID", "manifest invalid")
MANIFEST_TOO_LARGE = ErrorCode("MANIFEST_INVALID", "manifest too large")
MANIFEST_UNKNOWN = _register("MANIFEST_UNKNOWN", "manifest unknown to registry")
NAME_INVALID = _register("NAME_INVALID", "invalid repository name")
NAME_UNKNOWN = _register("NAME_UNKNOWN", "repository name not known to registry")
SIZE_INVALID = _register("SIZE_INVALID", "provided length did not match content length")
TAG_INVALID = _register("TAG_INVALID", "manifest tag did not match URI")
UNAUTHORIZED = _register("UNAUTHORIZED", "authentication required")
DENIED = _register("DENIED", "requested access to the resource is denied")
UNSUPPORTED = _register("UNSUPPORTED", "the operation is unsupported")
NOT_FOUND = ErrorCode("UNSUPPORTED", "no such endpoint in the registry API")
TOOMANYREQUESTS = _register("TOOMANYREQUESTS", "too many requests")
RANGE_INVALID = _register("RANGE_INVALID", "invalid content range")
PAGINATION_NUMBER_INVALID = _register(
    "PAGINATION_NUMBER_INVALID", "invalid number of results requested"
)
#: Trustyard's own API (`/api/v1/...`): a query parameter that cannot be understood.
QUERY_INVALID = _register("QUERY_INVALID", "invalid query parameter")
#: Trustyard's own code: a value holds a NUL character, which nothing stored can hold.
TEXT_INVALID = _register("TEXT_INVALID", "a value holds a NUL character")
UNAVAILABLE = _register("UNAVAILABLE", "the storage backend is unavailable")
#: Trustyard's own code (clients show the message): the disk or bucket has no room left.
STORAGE_FULL = _register(
    "STORAGE_FULL", "the registry's storage is full: nothing was stored, retry once freed"
)
UNKNOWN = ErrorCode("UNKNOWN", "unknown error")


class OciError(Exception):
    """A failure described in the spec's terms: a code, a message and a detail."""

    def __init__(self, error: ErrorCode, detail: Any = None, *, message: str | None = None) -> None:
        super().__init__(message or error.message)
        self.error = error
        self.detail = detail
        self.message = message or error.message

    def body(self) -> dict[str, Any]:
        """The spec's JSON error document for this failure."""
        entry: dict[str, Any] = {"code": self.error.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}
