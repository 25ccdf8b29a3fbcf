"""Listings: `GET /v2/<name>/tags/list` and `GET /v2/_catalog` (spec: "Listing tags"; the
catalog API is the reference registry's extension), paginated with `n`, `last` and `Link`."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from registry.auth.middleware import pull_filter
from registry.context import RegistryContext, context
from registry.errors import RegistryError
from registry.pagination import Page
from storage.oci.errors import NAME_UNKNOWN


async def list_tags(request: web.Request, name: str, _: str) -> web.StreamResponse:
    """The repository's tags in lexical order."""
    ctx = context(request)
    if not await ctx.db.repository_exists(name):
        raise RegistryError(NAME_UNKNOWN, {"name": name})
    page = Page.from_request(request)
    tags = await ctx.db.list_tags(name, page.limit + 1, page.last) if page.limit else []
    more = len(tags) > page.limit
    tags = tags[: page.limit]
    return web.json_response(
        {"name": name, "tags": tags},
        headers=page.link(f"/v2/{name}/tags/list", tags, more),
    )


async def catalog(request: web.Request) -> web.StreamResponse:
    """Every repository the caller may pull, in lexical order."""
    ctx = context(request)
    page = Page.from_request(request)
    visible = pull_filter(request)
    if visible is None:
        names = await ctx.db.list_repositories(page.limit + 1, page.last) if page.limit else []
    else:
        names = await _visible_repositories(ctx, page.limit + 1, page.last, visible)
    more = len(names) > page.limit
    names = names[: page.limit]
    return web.json_response(
        {"repositories": names}, headers=page.link("/v2/_catalog", names, more)
    )


async def _visible_repositories(
    ctx: RegistryContext, limit: int, last: str | None, visible: Callable[[str], bool]
) -> list[str]:
    """Up to `limit` names after `last` that pass `visible`, reading the table in batches."""
    found: list[str] = []
    while limit and len(found) < limit:
        batch = await ctx.db.list_repositories(max(limit, 100), last)
        found.extend(name for name in batch if visible(name))
        if len(batch) < max(limit, 100):
            break
        last = batch[-1]
    return found[:limit]
