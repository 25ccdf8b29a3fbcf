"""The one place that turns a failure into the spec's error body and HTTP status.

The codes and their messages are vocabulary (`storage.oci.errors`); storage and the policy raise
their own exceptions (`storage.errors`, `policies.errors`). Here each code gets its HTTP status,
each domain exception its code, and the error middleware in `registry.middleware` renders
`{"errors": [{"code", "message", "detail"}]}` with `error_response`.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from policies.errors import PolicyDenied
from storage.errors import (
    BlobDamaged,
    StorageError,
    StorageFull,
    StorageUnavailable,
    TextNotStorable,
    UploadMemoryExhausted,
)
from storage.oci.errors import (
    BLOB_UNKNOWN,
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    DENIED,
    DIGEST_INVALID,
    ERROR_CODES,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_TOO_LARGE,
    MANIFEST_UNKNOWN,
    NAME_INVALID,
    NAME_UNKNOWN,
    NOT_FOUND,
    PAGINATION_NUMBER_INVALID,
    QUERY_INVALID,
    RANGE_INVALID,
    SIZE_INVALID,
    STORAGE_FULL,
    TAG_INVALID,
    TEXT_INVALID,
    TOOMANYREQUESTS,
    UNAUTHORIZED,
    UNAVAILABLE,
    UNKNOWN,
    UNSUPPORTED,
    ErrorCode,
    OciError,
)

#: Trustyard's scanner webhook (`registry.scans.webhook`): its own codes, answered only there.
SCAN_INVALID = ErrorCode("SCAN_INVALID", "scan report invalid")
SCAN_TOO_LARGE = ErrorCode("SCAN_TOO_LARGE", "scan report too large")
SCANNER_UNAUTHORIZED = ErrorCode("UNAUTHORIZED", "scanner authentication required")
SCAN_STALE = ErrorCode("SCAN_STALE", "a newer scan report is stored")

#: The HTTP status each code is answered with.
STATUSES: dict[ErrorCode, int] = {
    BLOB_UNKNOWN: 404,
    BLOB_UPLOAD_INVALID: 400,
    BLOB_UPLOAD_UNKNOWN: 404,
    DIGEST_INVALID: 400,
    # 400, as Distribution and Zot answer (the spec names the code, not the status): the client
    # sent a manifest it cannot yet push, a client error, not a missing resource at the URL.
    MANIFEST_BLOB_UNKNOWN: 400,
    MANIFEST_INVALID: 400,
    MANIFEST_TOO_LARGE: 413,
    MANIFEST_UNKNOWN: 404,
    NAME_INVALID: 400,
    NAME_UNKNOWN: 404,
    SIZE_INVALID: 400,
    # Only for a manifest PUT to a tag outside the spec's grammar (as Distribution answers; the
    # spec calls it a legacy code clients may meet). A GET, HEAD or DELETE of such a reference
    # answers 404 MANIFEST_UNKNOWN: it can only mean "not found".
    TAG_INVALID: 400,
    UNAUTHORIZED: 401,
    DENIED: 403,
    UNSUPPORTED: 405,
    NOT_FOUND: 404,
    TOOMANYREQUESTS: 429,
    RANGE_INVALID: 416,
    PAGINATION_NUMBER_INVALID: 400,
    QUERY_INVALID: 400,
    TEXT_INVALID: 400,
    UNAVAILABLE: 503,
    STORAGE_FULL: 507,
    UNKNOWN: 500,
    SCAN_INVALID: 400,
    SCAN_TOO_LARGE: 413,
    SCANNER_UNAUTHORIZED: 401,
    SCAN_STALE: 409,
}

_unanswerable = set(ERROR_CODES.values()) - set(STATUSES)
if _unanswerable:  # a code added to the vocabulary must be given its status here
    raise RuntimeError(f"error codes without an HTTP status: {sorted(_unanswerable, key=str)}")

#: The spec's code for each domain exception of the floors below (the first that matches).
DOMAIN_CODES: dict[type[Exception], ErrorCode] = {
    StorageUnavailable: UNAVAILABLE,
    StorageFull: STORAGE_FULL,
    TextNotStorable: TEXT_INVALID,
    BlobDamaged: BLOB_UNKNOWN,
    UploadMemoryExhausted: TOOMANYREQUESTS,
    PolicyDenied: DENIED,
    # A storage failure without a code of its own: the storage could not do it, so 503.
    StorageError: UNAVAILABLE,
}


def status_of(error: ErrorCode) -> int:
    """The HTTP status `error` is answered with."""
    return STATUSES[error]


class RegistryError(OciError):
    """A failure the HTTP floor answers, with headers the response must carry (a challenge, a
    `Retry-After`)."""

    def __init__(
        self,
        error: ErrorCode,
        detail: Any = None,
        *,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error, detail, message=message)
        self.headers = headers or {}


#: Every exception `spec_error` turns into the spec's terms.
ANSWERABLE = (OciError, StorageError, PolicyDenied)


def spec_error(exc: OciError | StorageError | PolicyDenied) -> OciError:
    """`exc` in the spec's terms: a code, the message the client shows, the detail."""
    if isinstance(exc, OciError):
        return exc
    for kind, error in DOMAIN_CODES.items():
        if isinstance(exc, kind):
            return OciError(error, exc.detail, message=exc.message)
    raise TypeError(f"no spec error code for {type(exc).__name__}")


def status_for(exc: OciError | StorageError | PolicyDenied) -> int:
    """The HTTP status a domain or spec failure is answered with."""
    return status_of(spec_error(exc).error)


def error_response(exc: OciError | StorageError | PolicyDenied) -> web.Response:
    """The spec's error response for a failure of any floor."""
    error = spec_error(exc)
    return web.Response(
        status=status_of(error.error),
        text=json.dumps(error.body()),
        content_type="application/json",
        headers=getattr(exc, "headers", None) or {},
    )
