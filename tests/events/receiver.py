"""A webhook receiver for tests: an aiohttp server on 127.0.0.1 that verifies signatures the way
the README tells receivers to, records what it got, and can be told to fail."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from registry.events.signing import verify
from tests.server_process import port_of, reserve_port


@dataclass
class Received:
    """One request the receiver accepted."""

    headers: dict[str, str]
    body: bytes
    signature_problem: str | None

    @property
    def event(self) -> dict[str, Any]:
        """The CloudEvent."""
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records events; answers 503 while `failures` is above zero (counting down). With `hold`,
    the first request after the failures waits until the test sets it: the sender is then
    parked mid-attempt, so the outbox can be inspected without racing the next retry."""

    secret: str | None = None
    failures: int = 0
    received: list[Received] = field(default_factory=list)
    refused: int = 0
    hold: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.failures > 0:
            self.failures -= 1
            self.refused += 1
            return web.Response(status=503)
        if self.hold is not None:
            await self.hold.wait()
        problem = verify(self.secret, request.headers, body) if self.secret else None
        self.received.append(Received(dict(request.headers), body, problem))
        return web.Response(status=204)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app

    def types(self) -> list[str]:
        return [r.event["type"].removeprefix("dev.trustyard.") for r in self.received]


async def serve(receiver: Receiver, sock: socket.socket | None = None) -> tuple[web.AppRunner, int]:
    """Start `receiver` on `sock` (a socket from `reserve_port`, bound already) or on a port the
    kernel picks; return the runner and the port. No port is ever freed and taken again."""
    sock = sock or reserve_port()
    runner = web.AppRunner(receiver.app(), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner, port_of(sock)


async def until_drained(client: TestClient, timeout: float = 60.0) -> None:
    """Until the registry's outbox is empty. Every event is written to the outbox with its
    change, and its row goes only after the receiver answered 2xx: once it is empty, every event
    the requests so far caused has been received, and none is still on its way."""
    deadline = time.monotonic() + timeout
    while True:
        resp = await client.get("/api/v1/events/deliveries")
        assert resp.status == 200
        listing = await resp.json()
        if listing == {"counts": {"pending": 0, "failed": 0}, "deliveries": []}:
            return
        assert time.monotonic() < deadline, f"still listed: {listing}"
        await asyncio.sleep(0.02)
