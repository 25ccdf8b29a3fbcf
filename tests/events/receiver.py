"""A webhook receiver for tests: an aiohttp server on 127.0.0.1 that verifies signatures the way
the README tells receivers to, records what it got, and can be told to fail."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from registry.events.signing import verify


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


async def serve(receiver: Receiver, port: int) -> web.AppRunner:
    """Start `receiver` on 127.0.0.1:`port`."""
    runner = web.AppRunner(receiver.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner
