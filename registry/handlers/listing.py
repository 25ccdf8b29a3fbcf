"""Listings: `GET /v2/<name>/tags/list` and `GET /v2/_catalog` (spec: "Listing tags"; the
catalog API is the reference registry's extension), paginated with `n`, `last` and `Link`."""

from __future__ import annotations

from aiohttp import web

from registry.context import context
from registry.errors import NAME_UNKNOWN, RegistryError
from registry.pagination import Page


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
    """Every repository in lexical order."""
    ctx = context(request)
    page = Page.from_request(request)
    names = await ctx.db.list_repositories(page.limit + 1, page.last) if page.limit else []
    more = len(names) > page.limit
    names = names[: page.limit]
    return web.json_response(
        {"repositories": names}, headers=page.link("/v2/_catalog", names, more)
    )
