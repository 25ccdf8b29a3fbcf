"""The management API's routes beside those `registry.routes` mounts (`/api/v1/...`), and the
API's fallback: an unknown `/api/v1/` path gets the spec's JSON error body, not a bare 404.
The whole API is described in `registry.handlers.openapi`."""

from __future__ import annotations

import functools

from aiohttp import web

from registry.errors import RegistryError
from registry.expect import expect_continue
from registry.handlers import (
    decisions_summary_api,
    health_api,
    library_stale_api,
    openapi,
    quarantine_api,
    repositories_api,
)
from storage.oci.errors import NOT_FOUND

#: The fallback route's path: not part of the API, so not in the OpenAPI document.
FALLBACK = "/api/v1/{tail:.*}"


async def api_not_found(request: web.Request) -> web.StreamResponse:
    """Any other `/api/v1/` path."""
    raise RegistryError(NOT_FOUND, {"path": request.path[:300]})


def add_api_routes(app: web.Application) -> None:
    """Mount the management API's routes (after `registry.routes.add_routes`)."""
    add = functools.partial(app.router.add_get, expect_handler=expect_continue)
    add("/api/v1/openapi.json", openapi.openapi_document)
    add("/api/v1/health", health_api.health)
    add("/api/v1/decisions/summary", decisions_summary_api.decisions_summary)
    add("/api/v1/quarantine", quarantine_api.list_quarantine)
    add("/api/v1/library/stale", library_stale_api.library_stale)
    add("/api/v1/repositories", repositories_api.list_repositories)
    add("/api/v1/repositories/{repository:.+}/tags", repositories_api.list_tags)
    add(
        "/api/v1/repositories/{repository:.+}/manifests/{reference:[^/]+}",
        repositories_api.manifest_details,
    )
    app.router.add_route("*", FALLBACK, api_not_found, expect_handler=expect_continue)
