"""The table of error codes, and the one place that turns them into the spec's error body.

Every failure a handler can answer is registered here once: its code (as the OCI Distribution
Specification spells it), HTTP status and message. Handlers raise `RegistryError(CODE, detail)`;
the error middleware in `registry.middleware` renders `{"errors": [{"code", "message", "detail"}]}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class ErrorCode:
    """One registered error: the spec's code, its HTTP status and what it means."""

    code: str
    status: int
    message: str


def _register(code: str, status: int, message: str) -> ErrorCode:
    entry = ErrorCode(code, status, message)
    ERROR_CODES[code] = entry
    return entry


ERROR_CODES: dict[str, ErrorCode] = {}

BLOB_UNKNOWN = _register("BLOB_UNKNOWN", 404, "blob unknown to registry")
BLOB_UPLOAD_INVALID = _register("BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BLOB_UPLOAD_UNKNOWN = _register("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
DIGEST_INVALID = _register("DIGEST_INVALID", 400, "provided digest did not match uploaded content")
#: 400, as Distribution and Zot answer (the spec names the code, not the status): the client
#: sent a manifest it cannot yet push, a client error, not a missing resource at the URL.
MANIFEST_BLOB_UNKNOWN = _register(
    "MANIFEST_BLOB_UNKNOWN", 400, "manifest references a manifest or blob unknown to registry"
)
MANIFEST_INVALID = _register("MANIFEST_INVALID", 400, "manifest invalid")
MANIFEST_TOO_LARGE = ErrorCode("MANIFEST_INVALID", 413, "manifest too large")
MANIFEST_UNKNOWN = _register("MANIFEST_UNKNOWN", 404, "manifest unknown to registry")
NAME_INVALID = _register("NAME_INVALID", 400, "invalid repository name")
NAME_UNKNOWN = _register("NAME_UNKNOWN", 404, "repository name not known to registry")
SIZE_INVALID = _register("SIZE_INVALID", 400, "provided length did not match content length")
#: Only for a manifest PUT to a tag outside the spec's grammar (as Distribution answers; the spec
#: calls it a legacy code clients may meet). A GET, HEAD or DELETE of such a reference answers
#: 404 MANIFEST_UNKNOWN: it can only mean "not found".
TAG_INVALID = _register("TAG_INVALID", 400, "manifest tag did not match URI")
UNAUTHORIZED = _register("UNAUTHORIZED", 401, "authentication required")
DENIED = _register("DENIED", 403, "requested access to the resource is denied")
UNSUPPORTED = _register("UNSUPPORTED", 405, "the operation is unsupported")
NOT_FOUND = ErrorCode("UNSUPPORTED", 404, "no such endpoint in the registry API")
TOOMANYREQUESTS = _register("TOOMANYREQUESTS", 429, "too many requests")
RANGE_INVALID = _register("RANGE_INVALID", 416, "invalid content range")
PAGINATION_NUMBER_INVALID = _register(
    "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"
)
#: Trustyard's own API (`/api/v1/...`): a query parameter that cannot be understood.
QUERY_INVALID = _register("QUERY_INVALID", 400, "invalid query parameter")
UNAVAILABLE = _register("UNAVAILABLE", 503, "the storage backend is unavailable")


class RegistryError(Exception):
    """A failure the client is told about with the spec's error body."""

    def __init__(
        self,
        error: ErrorCode,
        detail: Any = None,
        *,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or error.message)
        self.error = error
        self.detail = detail
        self.message = message or error.message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The spec's JSON error document for this failure."""
        entry: dict[str, Any] = {"code": self.error.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}

    def response(self) -> web.Response:
        """The HTTP response carrying this failure."""
        return web.Response(
            status=self.error.status,
            text=json.dumps(self.body()),
            content_type="application/json",
            headers=self.headers,
        )
