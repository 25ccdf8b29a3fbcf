"""Proxied `GET /v2/<name>/tags/list`: the upstream's tags, not only the cached ones.

A client listing a mirrored repository wants to see what it can pull, and anything the upstream
has can be pulled through the proxy. So the list is the upstream's: fetched whole (following the
upstream's own `next` links, bounded in pages, tags and bytes, stopping when a page brings
nothing new: some upstreams page in storage order and loop), kept for `manifest_ttl`, sorted,
and paginated here exactly as a local repository's list (`n`, `last`, `Link`), because
upstreams disagree on how they order and page (the reference registry 2.8 pages in storage
order and sends a `next` link back to the same page). Only tags of the spec's grammar are
listed: an upstream cannot put a path or a header into our answer.

When the upstream cannot answer (down, erroring, rate limiting, not a tag list), the tags
cached here are listed with a `Warning` saying so; with none cached, the upstream's failure is
the answer.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from registry.bodies import BodyTooLarge, read_bounded
from registry.errors import NAME_UNKNOWN, RegistryError
from registry.pagination import Page
from registry.proxy.client import UpstreamClient, UpstreamError
from registry.proxy.manifests import stale_warning, upstream_refusal
from registry.proxy.stats import ProxyStats
from registry.upstream_settings import ProxySettings, Upstream
from storage.oci.grammar import TAG_RE

#: Bounds of one upstream's tag list: bytes of one page, pages followed, tags kept (Docker
#: Hub's busiest repositories list a few thousand tags).
MAX_TAG_PAGE = 8 << 20
MAX_PAGES = 100
MAX_TAGS = 100_000
#: Pages larger than this are parsed in a thread.
LARGE_TAG_PAGE = 256 << 10
#: Upstream tag lists remembered at once (least recently listed forgotten first).
MAX_LISTS = 256

Handler = Callable[[web.Request, str, str], Awaitable[web.StreamResponse]]


class TagLists:
    """The upstreams' tag lists of proxied repositories, each kept for `manifest_ttl`."""

    def __init__(
        self, settings: ProxySettings, clients: dict[str, UpstreamClient], stats: ProxyStats
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.stats = stats
        self._lists: OrderedDict[tuple[str, str], tuple[float, list[str]]] = OrderedDict()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def serve(
        self, request: web.Request, upstream: Upstream, remote: str, name: str, handler: Handler
    ) -> web.StreamResponse:
        """Answer `GET /v2/<name>/tags/list` for proxied `name`: the upstream's tags, or the
        cached ones (the ordinary listing, `handler`) with a `Warning` when the upstream cannot
        answer."""
        page = Page.from_request(request)
        try:
            tags = await self._tags_of(upstream, remote, name)
        except UpstreamError as exc:
            self.stats.count("tags_cached_served")
            try:
                response = await handler(request, name, "")
            except RegistryError as missing:
                if missing.error is not NAME_UNKNOWN:
                    raise
                message = f"{exc}; no tag of {name} is cached"
                raise upstream_refusal(exc, {"name": name}, message) from None
            response.headers["Warning"] = stale_warning(
                exc.reason, "only the tags cached here are listed"
            )
            return response
        start = 0 if page.last is None else _after(tags, page.last)
        chosen = tags[start : start + page.limit]
        more = start + page.limit < len(tags)
        return web.json_response(
            {"name": name, "tags": chosen},
            headers=page.link(f"/v2/{name}/tags/list", chosen, more),
        )

    async def _tags_of(self, upstream: Upstream, remote: str, name: str) -> list[str]:
        """The upstream's sorted tags of `remote` (fetched at most once per TTL)."""
        key = (upstream.name, remote)
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:  # many clients listing at once: one upstream listing
                kept = self._lists.get(key)
                if kept is not None and time.monotonic() - kept[0] < self.settings.manifest_ttl:
                    self._lists.move_to_end(key)
                    return kept[1]
                tags = await self._fetch(self.clients[upstream.name], upstream, remote, name)
                self._lists[key] = (time.monotonic(), tags)
                while len(self._lists) > MAX_LISTS:
                    self._lists.popitem(last=False)
                self.stats.count("tags_listed")
                return tags
        finally:
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]

    async def _fetch(
        self, client: UpstreamClient, upstream: Upstream, remote: str, name: str
    ) -> list[str]:
        found: set[str] = set()
        path: str | None = "tags/list"
        pages = 0
        while path is not None and pages < MAX_PAGES and len(found) < MAX_TAGS:
            pages += 1
            page, path = await self._page(client, upstream, remote, name, path)
            before = len(found)
            found.update(page[: MAX_TAGS - len(found)])
            if len(found) == before:
                break  # a page with nothing new: the upstream's paging goes round
        return sorted(found)

    async def _page(
        self, client: UpstreamClient, upstream: Upstream, remote: str, name: str, path: str
    ) -> tuple[list[str], str | None]:
        """One page of the upstream's list and the path of the next, if it names one."""
        response = await client.request("GET", remote, path, {"Accept": "application/json"})
        async with response:
            if response.status == 404:
                raise RegistryError(
                    NAME_UNKNOWN,
                    {"name": name, "upstream": upstream.name},
                    message=f"repository {remote} unknown to upstream {upstream.name}",
                )
            if response.status != 200:
                raise UpstreamError(upstream, f"tags/list answered {response.status}")
            try:
                body = await read_bounded(response.content, MAX_TAG_PAGE)
            except BodyTooLarge:
                raise UpstreamError(upstream, "tag list page larger than the 8 MiB limit") from None
            link = response.links.get("next")
        parse = _tags
        tags = await asyncio.to_thread(parse, body) if len(body) > LARGE_TAG_PAGE else parse(body)
        if tags is None:
            raise UpstreamError(upstream, "tags/list answered no JSON tag list")
        return tags, _next_path(link, remote)


def _next_path(link: object, remote: str) -> str | None:
    """The path after `/v2/<remote>/` of the upstream's `next` link, when it leads to this
    repository's tag list on the same upstream (a link elsewhere is not followed)."""
    if not isinstance(link, dict) or "url" not in link:
        return None
    url = urlsplit(str(link["url"]))
    if url.scheme or url.netloc or url.path != f"/v2/{remote}/tags/list":
        return None
    return f"tags/list?{url.query}" if url.query else None


def _after(tags: list[str], last: str) -> int:
    """The position of the first tag after `last` in the sorted `tags`."""
    return bisect.bisect_right(tags, last)


def _tags(body: bytes) -> list[str] | None:
    """The tags of an upstream's tag list in the spec's grammar, or None when it is none."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    tags = document.get("tags")
    if tags is None:
        return []  # Distribution answers `null` for a repository without tags
    if not isinstance(tags, list):
        return None
    return [t for t in tags if isinstance(t, str) and TAG_RE.fullmatch(t)]
