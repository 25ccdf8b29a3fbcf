"""The outbox survives the process: events written while the receiver is down are delivered
after the registry is killed (SIGKILL, no clean shutdown) and started again."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
import yaml

from tests.events.receiver import Receiver, serve
from tests.oci import push_image
from tests.server_process import port_of, reserve_port, start_registry

SECRET = "restart-secret-0123456789"


async def test_pending_events_delivered_after_kill_and_restart(tmp_path: Path) -> None:
    # The hook's socket is bound now and listens only once the receiver starts: meanwhile
    # deliveries are refused, and no other process can take the port.
    hook_socket = reserve_port()
    hook_port = port_of(hook_socket)
    config = tmp_path / "trustyard.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "events": {
                    "endpoints": [
                        {
                            "name": "hook",
                            "url": f"http://127.0.0.1:{hook_port}/hook",
                            "secret": SECRET,
                            # Generous: an attempt the receiver recorded but answered
                            # after the timeout (a loaded machine) would be sent again.
                            "timeout": "30s",
                        }
                    ],
                    "retry": {"initial": "100ms", "max": "300ms"},
                }
            }
        )
    )
    data = tmp_path / "data"
    server = start_registry(data, extra_args=["--config", str(config)])
    try:
        async with aiohttp.ClientSession(base_url=server.url) as session:
            digests = [
                (await push_image(session, "prod/app", tag))[0]  # type: ignore[arg-type]
                for tag in ("v1", "v2")
            ]
            deadline = time.monotonic() + 60  # only turns a hang into a failure
            while True:  # the receiver is down: deliveries are tried and fail
                async with session.get("/api/v1/events/deliveries") as resp:
                    rows = (await resp.json())["deliveries"]
                if rows and rows[0]["attempts"] >= 1:
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        server.stop(signal.SIGKILL)

    hook = Receiver(secret=SECRET)
    runner, _ = await serve(hook, hook_socket)
    try:
        server = start_registry(data, extra_args=["--config", str(config)])
        try:
            deadline = time.monotonic() + 60  # only turns a hang into a failure
            while len(hook.received) < 2:
                assert time.monotonic() < deadline, server.log()
                await asyncio.sleep(0.05)
        finally:
            server.stop()
    finally:
        await runner.cleanup()
    assert all(r.signature_problem is None for r in hook.received)
    events = [json.loads(r.body) for r in hook.received]
    assert [(e["data"]["tag"], e["data"]["digest"]) for e in events] == list(
        zip(["v1", "v2"], digests, strict=True)
    )
