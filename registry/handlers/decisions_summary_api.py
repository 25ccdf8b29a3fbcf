"""`GET /api/v1/decisions/summary` (Trustyard's own API): how many decisions allowed, warned and
denied per time bucket, for a chart of the decision log. `since` (default `24h`: epoch seconds,
ISO 8601 or a duration ago), `buckets` (1 to 200, default 24) and an optional `repository`."""

from __future__ import annotations

import math
import time
from typing import Any

from aiohttp import web

from registry.context import context
from registry.handlers.query_params import bad_query, text
from shared.durations import parse_since

MAX_BUCKETS = 200
OUTCOMES = ("allow", "warn", "deny")


async def decisions_summary(request: web.Request) -> web.StreamResponse:
    """Decision counts per bucket and outcome, oldest bucket first (empty buckets included)."""
    ctx = context(request)
    now = time.time()
    given = request.query.get("since") or "24h"
    try:
        since = parse_since(given, now)
    except ValueError as exc:
        raise bad_query("since", given, str(exc)) from None
    if not math.isfinite(since) or not 0 <= since < now:
        raise bad_query("since", given, "expected a time in the past")
    count = request.query.get("buckets") or "24"
    if not (count.isascii() and count.isdigit() and 0 < int(count) <= MAX_BUCKETS):
        raise bad_query("buckets", count, f"expected an integer from 1 to {MAX_BUCKETS}")
    buckets = int(count)
    width = max((now - since) / buckets, 1.0)
    repository = text(request.query, "repository", 255)
    await ctx.policy.flush()
    rows = await ctx.db.decision_counts(since=since, bucket=width, repository=repository)
    series: list[dict[str, Any]] = [
        {"start": since + i * width, **dict.fromkeys(OUTCOMES, 0)} for i in range(buckets)
    ]
    for start, outcome, total in rows:
        index = min(round((start - since) / width), buckets - 1)
        if outcome in OUTCOMES:
            series[index][outcome] += total
    return web.json_response(
        {
            "since": since,
            "until": now,
            "bucket_seconds": width,
            "totals": {o: sum(b[o] for b in series) for o in OUTCOMES},
            "buckets": series,
        }
    )
