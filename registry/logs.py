"""Logging: text or JSON lines on standard error, a request id on every request, the access log.

`log_format: json` writes one JSON object per line (`time`, `level`, `logger`, `message`, and
`request_id` for anything logged while a request is handled), as log collectors in Kubernetes
expect. Every response carries its request id in `X-Request-Id` (a well-formed id the client
sent is kept, so one id follows a request through a proxy). `access_log: true` logs one line per
request whatever `log_level` says: the access log is asked for by name, so it is not filtered by
the level meant for the application's own messages.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"
#: The request key holding the request id.
REQUEST_ID_KEY = "trustyard_request_id"
#: An id a client or proxy may hand us: short, no spaces or quotes that would break a log line.
_GOOD_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "trustyard_request_id", default=None
)

ACCESS_LOGGER = "trustyard.access"


class _RequestIdFilter(logging.Filter):
    """Adds `request_id` (or None) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _current_request_id.get()
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", None):
            entry["request_id"] = record.request_id
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send log records to standard error as text or JSON lines, at `level` (the access log
    logs at info whatever `level` is)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO)


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path, status, bytes, seconds, client and request id."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Log one finished request."""
        request_id = request.get(REQUEST_ID_KEY)
        fields = {
            "remote": request.remote,
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "bytes": response.body_length,
            "duration_s": round(time, 6),
            "user_agent": request.headers.get("User-Agent", ""),
        }
        # The request line as the common log format writes it (with the protocol version).
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.6fs "%s"',
            request.remote,
            request.method,
            request.path,
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length,
            time,
            fields["user_agent"],
            extra={"request_id": request_id, "access": fields},
        )


#: Fresh ids are this process's random prefix and a counter: unique across processes and
#: restarts, and far cheaper on the hot path than a uuid4 per request (a system call each).
_PREFIX = uuid.uuid4().hex[:16]
_COUNTER = itertools.count(1)


def _new_prefix() -> None:
    # `serve --workers` forks its workers from a parent that imported this module: without a
    # prefix of their own they would all hand out the same ids (…0001, …0002) at once.
    global _PREFIX, _COUNTER
    _PREFIX = uuid.uuid4().hex[:16]
    _COUNTER = itertools.count(1)


os.register_at_fork(after_in_child=_new_prefix)


def new_request_id(offered: str | None) -> str:
    """The id of a request: the client's when well-formed, else a fresh one."""
    if offered and _GOOD_ID.fullmatch(offered):
        return offered
    return f"{_PREFIX}{next(_COUNTER):016x}"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id, for every log line about it and for the response."""
    request_id = new_request_id(request.headers.get(REQUEST_ID_HEADER))
    request[REQUEST_ID_KEY] = request_id
    token = _current_request_id.set(request_id)
    try:
        return await handler(request)
    finally:
        _current_request_id.reset(token)


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every response, streamed ones and errors too, names its id."""
    request_id = request.get(REQUEST_ID_KEY)
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
