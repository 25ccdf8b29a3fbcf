"""The one hook between the `/v2/` router and the proxy.

`serve` is called for every resource request once its name is checked and authorized. Names
the configuration does not give to an upstream go straight to their handler. Proxied names are
read-only: anything but GET and HEAD is refused with DENIED naming the upstream. A manifest is
made present and fresh first, then answered by the ordinary handler (so the pull policy,
quarantine and pull events apply unchanged); a blob not yet stored is fetched (streamed to the
first client), then answered by the ordinary handler too; a tag list is the upstream's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from policies.errors import PolicyDenied
from policies.signatures.references import remap_identity
from registry.config import Config
from registry.context import CONTEXT
from registry.errors import BLOB_UNKNOWN, DENIED, RegistryError
from registry.events.hub import EVENTS
from registry.handlers.blobs import reader
from registry.metrics import METRICS
from registry.proxy.blobs import BlobFetcher, descriptor_size
from registry.proxy.client import UpstreamClient, UpstreamError
from registry.proxy.eviction import Evictor
from registry.proxy.manifests import ManifestCache, upstream_refusal
from registry.proxy.stats import ProxyStats
from registry.proxy.sync import remap_library_sources, sync_periodically
from registry.proxy.tags import TagLists
from registry.upstream_settings import ProxySettings, Upstream
from registry.workers import LEADER
from storage.oci.digests import parse_digest
from storage.oci.errors import OciError
from storage.oci.grammar import check_tag, is_digest

Handler = Callable[[web.Request, str, str], Awaitable[web.StreamResponse]]

#: Routes of `registry.routes` that only read.
_READ_ROUTES = frozenset({"blob", "manifest", "tags", "referrers"})


@dataclass
class Proxy:
    """The running proxy: its settings, one client per upstream, the caches and counters."""

    settings: ProxySettings
    clients: dict[str, UpstreamClient]
    stats: ProxyStats
    blobs: BlobFetcher
    manifests: ManifestCache
    evictor: Evictor
    tags: TagLists

    def metrics(self) -> str:
        """The proxy's lines of `/metrics`."""
        return self.stats.render(self.clients)


PROXY = web.AppKey("proxy", Proxy)


def setup_proxy(app: web.Application, config: Config) -> None:
    """Run the proxy in `app` when the configuration names upstreams (after the registry's
    resources are open, closed before them)."""
    settings = config.proxy
    if settings is None:
        return
    for upstream in settings.upstreams:
        # Upstream signatures name the upstream's repository: let them count here too.
        remap_identity(upstream.identity())

    async def running(app: web.Application) -> AsyncIterator[None]:
        stats = ProxyStats()
        clients = {u.name: UpstreamClient(u) for u in settings.upstreams}
        blobs = BlobFetcher(app[CONTEXT], stats)
        manifests = ManifestCache(app, settings, clients, blobs, stats)
        evictor = Evictor(app[CONTEXT], settings, stats)
        tags = TagLists(settings, clients, stats)
        proxy = Proxy(settings, clients, stats, blobs, manifests, evictor, tags)
        # Library images synced from a source: their upstream signatures count for them.
        remap_library_sources(app[CONTEXT].policy.policy.library, settings)
        app[PROXY] = proxy
        app[METRICS].sections.append(proxy.metrics)
        # Eviction and library sync once per registry: in the leading worker only; the other
        # workers write the pulls they noted often, so the leader's pass sees them (a pull it
        # misses by that much costs one fetch from the upstream again, never a wrong answer).
        background = (
            [
                asyncio.create_task(evictor.run()),
                asyncio.create_task(sync_periodically(app[CONTEXT], app[EVENTS], settings)),
            ]
            if app[LEADER]
            else [asyncio.create_task(evictor.flush_periodically())]
        )
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):
                await evictor.flush()
            await blobs.close()
            for client in clients.values():
                with contextlib.suppress(Exception):
                    await client.close()

    app.cleanup_ctx.append(running)


async def serve(
    request: web.Request, route: str, name: str, reference: str, handler: Handler
) -> web.StreamResponse:
    """Answer a `/v2/<name>/...` request, through the proxy when `name` is proxied."""
    proxy = request.app.get(PROXY)
    routed = proxy.settings.route(name) if proxy is not None else None
    if proxy is None or routed is None:
        return await handler(request, name, reference)
    upstream, path = routed
    if route not in _READ_ROUTES or request.method not in ("GET", "HEAD"):
        raise RegistryError(
            DENIED,
            {"name": name, "upstream": upstream.name},
            message=f"{name} is a read-only mirror of {upstream.url} (upstream {upstream.name}): "
            "push to a repository outside the proxied namespaces",
        )
    try:
        return await _serve_proxied(request, proxy, route, upstream, path, name, reference, handler)
    except UpstreamError as exc:
        raise upstream_refusal(exc, {"name": name}, str(exc)) from None


async def _serve_proxied(
    request: web.Request,
    proxy: Proxy,
    route: str,
    upstream: Upstream,
    path: str,
    name: str,
    reference: str,
    handler: Handler,
) -> web.StreamResponse:
    remote = upstream.remote_name(path)
    client = proxy.clients[upstream.name]
    if route == "manifest":
        # A reference outside the grammar never reaches the upstream's URL: the handler answers
        # it (404 MANIFEST_UNKNOWN with the grammar's reason).
        if not _in_grammar(reference):
            return await handler(request, name, reference)
        extra = await proxy.manifests.ensure(upstream, remote, name, reference)
        try:
            response = await handler(request, name, reference)
        except PolicyDenied:
            # A signature may have been added upstream since the image was cached: look
            # (at most once per manifest TTL), and decide afresh if anything new came.
            if not await proxy.manifests.refresh_after_denial(upstream, remote, name, reference):
                raise
            response = await handler(request, name, reference)
        response.headers.update(extra)
        if request.method == "GET":
            proxy.evictor.pulled(name, response.headers["Docker-Content-Digest"])
        return response
    if route == "blob":
        digest = parse_digest(reference)
        if await proxy.blobs.cached(name, digest):
            return await handler(request, name, reference)
        ctx = request.app[CONTEXT]
        # Only blobs of images pulled through the proxy (which met the policy) are fetched,
        # bounded by their descriptor's size: the proxy is no open door to the upstream.
        size = await descriptor_size(ctx.db, name, digest)
        if size is None:
            raise RegistryError(
                BLOB_UNKNOWN,
                {"digest": reference, "name": name},
                message=f"blob {reference} is not part of any image of {name} pulled through "
                "this proxy: pull its manifest first",
            )
        # The blob gate first: nothing is fetched for a caller who may not read it.
        head = request.method == "HEAD"
        await ctx.policy.check_blob_read(name, str(digest), reader(request, name), content=not head)
        if head:
            return web.Response(
                headers={
                    "Docker-Content-Digest": reference,
                    "Content-Length": str(size),
                    "Content-Type": "application/octet-stream",
                    "Accept-Ranges": "bytes",
                }
            )
        return await proxy.blobs.serve(request, client, remote, name, digest, size, handler)
    if route == "tags":
        return await proxy.tags.serve(request, upstream, remote, name, handler)
    return await handler(request, name, reference)


def _in_grammar(reference: str) -> bool:
    """Whether `reference` is a tag or a digest of the spec's grammar."""
    try:
        if is_digest(reference):
            parse_digest(reference)
        else:
            check_tag(reference)
    except OciError:
        return False
    return True
