"""The events test receiver (`tests.events.receiver`) on an event loop of its own thread, so that
it outlives each test's loop and serves a cluster started once per module."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from tests.events.receiver import Receiver, serve


class ReceiverThread:
    """`receiver` served on 127.0.0.1 (a port the kernel picks) from a background thread."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.port = 0

    def start(self) -> int:
        """Start serving; the port."""
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(serve(self.receiver), self.loop)
        self.runner, self.port = started.result(timeout=30)
        return self.port

    def stop(self) -> None:
        """Stop serving and end the thread."""
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()
