"""The console's pages. Each reads the management API (`registry.console.api_client`) and renders
a template; none reads the database or the policy itself."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlencode, urlsplit

from aiohttp import web

from registry.console.api_client import ApiError, api_get, api_path
from registry.console.charts import decisions_chart, lineage_picture
from registry.console.rendering import render

#: Consumers drawn in the lineage picture, at most (the consumers API lists them all).
MAX_DRAWN = 60
DECISION_FILTERS = ("repository", "outcome", "action", "rule", "identity", "since", "until")
SEVERITIES = ("critical", "high", "medium", "low", "negligible", "unknown")
CHART_WINDOWS = {"1h": 12, "24h": 24, "7d": 28, "30d": 30}


def _failed(request: web.Request, exc: ApiError, title: str) -> web.Response:
    return render(request, "error.html", status=exc.status, title=title, message=exc.message)


def _console_next(next_url: str | None, page: str, keep: dict[str, str]) -> str | None:
    """The console link for the API's `next` page URL (its `last` cursor, our filters)."""
    last = parse_qs(urlsplit(next_url).query).get("last") if next_url else None
    if not last:
        return None
    return f"{page}?{urlencode({**keep, 'last': last[0]})}"


async def home(request: web.Request) -> web.StreamResponse:
    """`/console/`: the library page."""
    raise web.HTTPSeeOther("/console/library")


async def library(request: web.Request) -> web.StreamResponse:
    """Declared base images and tags, pending digests, history, consumers, the rebuild list."""
    try:
        overview, stale = await asyncio.gather(
            api_get(request, "/api/v1/library"), api_get(request, "/api/v1/library/stale")
        )
        groups = []
        drawn = 0
        for image in overview["images"]:
            for tag in image["tags"]:
                if not tag["consumers"] or drawn >= MAX_DRAWN:
                    continue
                found = await api_get(
                    request, api_path("library", image["name"], tag["tag"], "consumers")
                )
                consumers = found["consumers"][: MAX_DRAWN - drawn]
                drawn += len(consumers)
                href = f"/console/repositories/{image['repository']}/-/{tag['tag']}"
                groups.append((f"{image['name']}:{tag['tag']}", href, consumers))
    except ApiError as exc:
        return _failed(request, exc, "Library")
    return render(
        request,
        "library.html",
        title="Library",
        library=overview,
        stale=stale["images"],
        lineage=lineage_picture(groups),
    )


async def quarantine(request: web.Request) -> web.StreamResponse:
    """Stored images that may not be pulled, why, and what would release them."""
    last = request.query.get("last", "")
    try:
        page = await api_get(request, "/api/v1/quarantine", {"n": "100", "last": last})
    except ApiError as exc:
        return _failed(request, exc, "Quarantine")
    return render(
        request,
        "quarantine.html",
        title="Quarantine",
        page=page,
        next_link=_console_next(page.get("next"), "/console/quarantine", {}),
        first=not last,
    )


async def decisions(request: web.Request) -> web.StreamResponse:
    """The decision log with filters and paging, and allows/denials over time."""
    filters = {k: request.query.get(k, "").strip() for k in DECISION_FILTERS}
    window = request.query.get("window", "24h")
    if window not in CHART_WINDOWS:
        window = "24h"
    query = {**filters, "n": "50", "last": request.query.get("last", "")}
    chart_query = {"since": window, "buckets": str(CHART_WINDOWS[window])}
    if filters["repository"]:
        chart_query["repository"] = filters["repository"]
    try:
        page, summary = await asyncio.gather(
            api_get(request, "/api/v1/decisions", query),
            api_get(request, "/api/v1/decisions/summary", chart_query),
        )
        error = None
    except ApiError as exc:
        page, error = {"decisions": [], "policy_version": ""}, exc.message
        summary = await api_get(request, "/api/v1/decisions/summary", {"since": window})
    keep = {k: v for k, v in filters.items() if v}
    return render(
        request,
        "decisions.html",
        title="Decisions",
        filters=filters,
        window=window,
        windows=list(CHART_WINDOWS),
        page=page,
        error=error,
        summary=summary,
        chart=decisions_chart(summary),
        next_link=_console_next(page.get("next"), "/console/decisions", {**keep, "window": window}),
        first=not request.query.get("last"),
        clear_link="/console/decisions",
        window_links={
            w: "/console/decisions?" + urlencode({**keep, "window": w}) for w in CHART_WINDOWS
        },
        newest_link="/console/decisions?" + urlencode({**keep, "window": window}),
    )


async def repositories(request: web.Request) -> web.StreamResponse:
    """Repositories, 100 a page, with a name prefix filter."""
    prefix = request.query.get("prefix", "").strip()
    try:
        page = await api_get(
            request,
            "/api/v1/repositories",
            {"prefix": prefix, "n": "100", "last": request.query.get("last", "")},
        )
    except ApiError as exc:
        return _failed(request, exc, "Repositories")
    keep = {"prefix": prefix} if prefix else {}
    return render(
        request,
        "repositories.html",
        title="Repositories",
        page=page,
        prefix=prefix,
        next_link=_console_next(page.get("next"), "/console/repositories", keep),
        first=not request.query.get("last"),
    )


async def repository(request: web.Request) -> web.StreamResponse:
    """One repository's tags."""
    name = request.match_info["repository"]
    try:
        page = await api_get(
            request,
            api_path("repositories", name, "tags"),
            {"n": "100", "last": request.query.get("last", "")},
        )
    except ApiError as exc:
        return _failed(request, exc, name)
    return render(
        request,
        "repository.html",
        title=name,
        page=page,
        next_link=_console_next(page.get("next"), f"/console/repositories/{name}", {}),
        first=not request.query.get("last"),
    )


async def manifest(request: web.Request) -> web.StreamResponse:
    """One manifest: platforms, size, signatures, attestations, scans, referrers, lineage."""
    name = request.match_info["repository"]
    reference = request.match_info["reference"]
    try:
        details, image_status = await asyncio.gather(
            api_get(request, api_path("repositories", name, "manifests", reference)),
            api_get(request, api_path("images", name, reference, "status")),
        )
    except ApiError as exc:
        return _failed(request, exc, f"{name}:{reference}")
    return render(
        request,
        "manifest.html",
        title=f"{name}@{reference}" if ":" in reference else f"{name}:{reference}",
        d=details,
        image_status=image_status,
        severities=SEVERITIES,
    )


async def health(request: web.Request) -> web.StreamResponse:
    """Policy version and file, event backlog, storage backend, last garbage collection."""
    try:
        document = await api_get(request, "/api/v1/health")
    except ApiError as exc:
        return _failed(request, exc, "Health")
    text = document["policy"]["text"]
    lines = text.splitlines() if text is not None else []
    starts = {rule["line"]: rule["name"] for rule in document["policy"]["rules"]}
    return render(
        request, "health.html", title="Health", h=document, lines=lines, rule_lines=starts
    )
