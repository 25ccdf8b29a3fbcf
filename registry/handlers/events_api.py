"""`GET /api/v1/events/deliveries` (Trustyard's own API, administrators only): events not yet
delivered. Filters `state` (pending | failed) and `endpoint`; `n` rows at most (default 100,
at most 1000), oldest first; `counts` totals both states."""

from __future__ import annotations

from aiohttp import web

from registry.errors import RegistryError
from registry.events.hub import EVENTS
from storage.oci.errors import QUERY_INVALID
from storage.oci.grammar import parse_count

MAX_PAGE = 1000


async def list_deliveries(request: web.Request) -> web.StreamResponse:
    """Pending and failed deliveries, with the last error of each."""
    outbox = request.app[EVENTS].outbox
    state = request.query.get("state")
    if state not in (None, "pending", "failed"):
        raise RegistryError(QUERY_INVALID, message="state: expected pending or failed")
    limit = parse_count(request.query.get("n", "100"))
    if limit is None or not 0 < limit <= MAX_PAGE:
        raise RegistryError(QUERY_INVALID, message=f"n: expected 1 to {MAX_PAGE}")
    rows = await outbox.list(state=state, endpoint=request.query.get("endpoint"), limit=limit)
    return web.json_response(
        {"counts": await outbox.counts(), "deliveries": [r.as_json() for r in rows]}
    )
