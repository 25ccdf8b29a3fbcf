"""How the console reads the management API: every page's data comes from `/api/v1/...`
exactly as a script would get it, through the API's own route and handler, without a network
round trip. The request is the console's (same caller, same identity), re-aimed at the API path;
the answer is the handler's JSON document, or an `ApiError` with the API's status and message."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from aiohttp import web
from yarl import URL

from registry.errors import ANSWERABLE, status_for
from registry.path_parameters import RESOLVED


class ApiError(Exception):
    """The API refused: its HTTP status and error message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def api_path(*parts: str) -> str:
    """`/api/v1/` and the parts, each percent-encoded except the `/` of repository names."""
    return "/api/v1/" + "/".join(quote(part, safe="/:@") for part in parts)


async def api_get(
    request: web.Request, path: str, query: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The JSON document `GET path?query` answers (`path` under `/api/v1/`)."""
    if not path.startswith("/api/v1/"):
        raise ValueError(f"not a management API path: {path}")
    url = URL(path, encoded=True).with_query({k: v for k, v in (query or {}).items() if v})
    sub = request.clone(method="GET", rel_url=url)
    match = await request.app.router.resolve(sub)
    # The copy keeps the console route's `match_info`: its handler reads the API route's
    # parameters from its state instead (`registry.path_parameters`).
    sub[RESOLVED] = dict(match)
    try:
        response = await match.handler(sub)
    except ANSWERABLE as exc:
        raise ApiError(status_for(exc), exc.message) from None
    except web.HTTPException as exc:
        raise ApiError(exc.status, exc.reason) from None
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes):
        raise ApiError(500, f"{path} did not answer a document")
    if response.status >= 400:
        raise ApiError(response.status, body.decode(errors="replace")[:300])
    return json.loads(body)
