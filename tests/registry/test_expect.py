"""Every route answers a request's `Expect` header the same way, before any middleware runs:
`100-continue` gets the interim `100 Continue` (clients that wait for it before sending a body
must get it), and any other expectation is ignored, so the request reaches the error middleware
(never a bare 417 without the spec's body, never a 500)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from aiohttp import hdrs, web

from tests.security.test_malformed_requests import raw_request, status_of


def concrete_paths(app: web.Application) -> list[tuple[str, str]]:
    """(method, path) for every route of `app`: each `{parameter}` filled with `x`, `*`
    routes asked with PUT (a body-carrying method, as a client sending `Expect` would)."""
    found = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        if "prefix" in info:  # a static folder
            path = f"{info['prefix']}/x"
        else:
            path = re.sub(r"\{[^}]*\}", "x", route.resource.canonical if route.resource else "/")
        method = "PUT" if route.method == hdrs.METH_ANY else route.method
        found.append((method, path))
    return sorted(set(found))


@pytest.fixture
async def served(start_client: Any) -> Any:
    return await start_client(auth={"service": "t", "permissions": []})


async def ask(port: int, method: str, path: str, expect: str) -> bytes:
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nExpect: {expect}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode()
    return await asyncio.to_thread(raw_request, port, request)


async def test_every_route_ignores_an_expectation_it_does_not_know(served: Any) -> None:
    routes = concrete_paths(served.server.app)
    assert len(routes) > 20, routes  # the OCI API, the management API, token, health, console
    for method, path in routes:
        answer = await ask(served.server.port, method, path, "teapot")
        assert status_of(answer) not in (417, 500), (method, path, answer[:300])


async def test_every_route_answers_100_continue_before_its_answer(served: Any) -> None:
    for method, path in concrete_paths(served.server.app):
        answer = await ask(served.server.port, method, path, "100-continue")
        interim, _, final = answer.partition(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue", (method, path, answer[:300])
        assert final.startswith(b"HTTP/1.1 ") and status_of(final) not in (417, 500), (
            method,
            path,
            final[:300],
        )
