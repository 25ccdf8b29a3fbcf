"""`GET /api/v1/library/stale` (Trustyard's own API): the rebuild list, tagged images built on a
library digest that is no longer its tag's current one, longest behind first; as JSON (default)
or as CSV with `format=csv` (a download)."""

from __future__ import annotations

import csv
import io
import time

from aiohttp import web

from policies.library.reports import stale_images
from registry.context import context
from registry.handlers.query_params import choice

CSV_COLUMNS = (
    "repository",
    "tag",
    "digest",
    "base",
    "base_digest",
    "current_digest",
    "replaced_at",
    "behind_seconds",
    "platforms",
)


async def library_stale(request: web.Request) -> web.StreamResponse:
    """The rebuild list."""
    form = choice(request.query, "format", ("json", "csv"), "json")
    now = time.time()
    stale = [c.as_json(now) for c in await stale_images(context(request).db)]
    if form == "json":
        return web.json_response({"images": stale})
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in stale:
        writer.writerow({**row, "platforms": " ".join(row.get("platforms") or [])})
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="trustyard-rebuild-list.csv"'},
    )
