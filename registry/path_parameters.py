"""A request's path parameters (`{repository}`, `{reference}`, ...), read by the handlers of
routes that have them.

The router's match is aiohttp's `request.match_info`. The console calls API handlers in process
on a copy of its own request re-aimed at the API path (`registry.console.api_client`); aiohttp
offers no public way to give that copy its own match, so the parameters the router resolved for
it travel in the copy's state under `RESOLVED`, and win over the console route's own.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

#: The path parameters resolved for a request called in process (not by aiohttp's dispatch).
RESOLVED = web.RequestKey("resolved_path_parameters", Mapping[str, str])


def path_parameter(request: web.Request, name: str) -> str:
    """The path parameter `name` of the route serving `request`."""
    resolved = request.get(RESOLVED)
    return (request.match_info if resolved is None else resolved)[name]
