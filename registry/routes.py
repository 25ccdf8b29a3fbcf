"""The `/v2/` URL space: which handler serves which path and method.

Repository names contain slashes, so the path is matched from its end: everything before the
last `/blobs/`, `/manifests/`, `/tags/list` or `/referrers/` is the name, which is then checked
against the spec's grammar before any handler runs (NAME_INVALID otherwise).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from registry.auth.middleware import authorize, authorize_base, authorize_catalog
from registry.errors import RegistryError
from registry.expect import expect_continue
from registry.handlers import (
    blobs,
    events_api,
    library_api,
    listing,
    manifests,
    policy_api,
    referrers,
    uploads,
)
from registry.metrics import ROUTE_KEY, metrics_endpoint
from registry.proxy.routing import serve as proxied
from registry.scans import webhook as scans_webhook
from storage.oci.errors import NOT_FOUND, UNSUPPORTED
from storage.oci.grammar import check_name

ResourceHandler = Callable[[web.Request, str, str], Awaitable[web.StreamResponse]]

#: (route name for metrics, path pattern after `/v2/`, {method: handler}); `name` and
#: `ref` are the pattern's named groups.
ROUTES: list[tuple[str, re.Pattern[str], dict[str, ResourceHandler]]] = [
    (
        "upload_start",
        re.compile(r"(?P<name>.+)/blobs/uploads/?(?P<ref>)"),
        {"POST": uploads.start_upload},
    ),
    (
        "upload",
        re.compile(r"(?P<name>.+)/blobs/uploads/(?P<ref>[^/]+)"),
        {
            "PATCH": uploads.patch_upload,
            "PUT": uploads.finish_upload,
            "GET": uploads.upload_status,
            "DELETE": uploads.cancel_upload,
        },
    ),
    (
        "blob",
        re.compile(r"(?P<name>.+)/blobs/(?P<ref>[^/]+)"),
        {"GET": blobs.get_blob, "HEAD": blobs.get_blob, "DELETE": blobs.delete_blob},
    ),
    (
        "manifest",
        re.compile(r"(?P<name>.+)/manifests/(?P<ref>[^/]+)"),
        {
            "GET": manifests.get_manifest,
            "HEAD": manifests.get_manifest,
            "PUT": manifests.put_manifest,
            "DELETE": manifests.delete_manifest,
        },
    ),
    ("tags", re.compile(r"(?P<name>.+)/tags/list(?P<ref>)"), {"GET": listing.list_tags}),
    (
        "referrers",
        re.compile(r"(?P<name>.+)/referrers/(?P<ref>[^/]+)"),
        {"GET": referrers.list_referrers},
    ),
]


async def api_base(request: web.Request) -> web.StreamResponse:
    """`GET /v2/`: the registry implements the API (with auth on: for authenticated callers)."""
    authorize_base(request)
    return web.json_response({})


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Route a `/v2/...` request to its resource handler."""
    tail = request.match_info["tail"]
    if tail == "":
        request[ROUTE_KEY] = "base"
        return await _only(request, ("GET", "HEAD"), api_base)
    if tail == "_catalog":
        request[ROUTE_KEY] = "catalog"
        return await _only(request, ("GET",), _authorized_catalog)
    for route, pattern, methods in ROUTES:
        match = pattern.fullmatch(tail)
        if match is None:
            continue
        request[ROUTE_KEY] = route
        handler = methods.get(request.method)
        if handler is None:
            raise RegistryError(
                UNSUPPORTED,
                {"method": request.method},
                headers={"Allow": ", ".join(methods)},
            )
        name = check_name(match["name"])
        # Proxied names (registry.proxy) are served through the proxy, others straight.
        return await proxied(authorize(request, name), route, name, match["ref"], handler)
    raise RegistryError(NOT_FOUND, {"path": request.path[:300]})


async def _only(
    request: web.Request,
    allowed: tuple[str, ...],
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    if request.method not in allowed:
        raise RegistryError(
            UNSUPPORTED, {"method": request.method}, headers={"Allow": ", ".join(allowed)}
        )
    return await handler(request)


async def _authorized_catalog(request: web.Request) -> web.StreamResponse:
    authorize_catalog(request)
    return await listing.catalog(request)


def add_routes(app: web.Application) -> None:
    """Mount the OCI Distribution API on `app`."""
    route = functools.partial(app.router.add_route, expect_handler=expect_continue)
    get = functools.partial(app.router.add_get, expect_handler=expect_continue)
    post = functools.partial(app.router.add_post, expect_handler=expect_continue)
    # [\s\S]: a path may hold a percent-encoded newline, which `.` does not match; the
    # dispatcher answers it with the spec's error, not aiohttp's plain 404.
    route("*", r"/v2/{tail:[\s\S]*}", dispatch)
    route("*", "/v2", _redirect_base)
    get("/metrics", metrics_endpoint)
    # Trustyard's own API (policy decisions and image status), beside the OCI one.
    get("/api/v1/decisions", policy_api.list_decisions)
    get("/api/v1/images/{repository:.+}/{reference:[^/]+}/status", policy_api.image_status)
    # The base-image library (policies.library).
    get("/api/v1/library", library_api.library_overview)
    get("/api/v1/library/{name:.+}/{tag:[^/]+}/consumers", library_api.library_consumers)
    # Scan reports in (the scanner webhook) and out.
    post("/api/v1/scans", scans_webhook.post_scan)
    get("/api/v1/scans/{digest}", scans_webhook.get_scans)
    # Events not yet delivered.
    get("/api/v1/events/deliveries", events_api.list_deliveries)


async def _redirect_base(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/v2/")


def add_fallback(app: web.Application) -> None:
    """Answer every path no route serves (and every method a route does not take) with the
    spec's error body. Called after every other route is added: the router tries routes in the
    order they were added."""
    app.router.add_route("*", r"/{tail:[\s\S]*}", _no_route, expect_handler=expect_continue)


async def _no_route(request: web.Request) -> web.StreamResponse:
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is request.match_info.route.resource:
            continue
        match, methods = await resource.resolve(request)
        if match is None:
            allowed |= methods
    if allowed:
        raise RegistryError(
            UNSUPPORTED,
            {"method": request.method},
            headers={"Allow": ", ".join(sorted(allowed))},
        )
    raise RegistryError(NOT_FOUND, {"path": request.path[:300]})
