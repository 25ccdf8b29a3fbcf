"""Two replicas share one events outbox: each event is delivered exactly once, in order per
repository, on both backends. Every replica runs a sender; a row is claimed (a conditional
update of its due time) before it is sent, and of two senders claiming one row one gets it."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp
import yaml

from tests.events.receiver import Receiver, serve
from tests.oci import push_image
from tests.replicas.conftest import StartReplicas

SECRET = "replica-secret-0123456789"
#: Images pushed through each replica, in each of the repositories.
PUSHES = 12
REPOSITORIES = ("team/one", "team/two")
PATIENCE = 60.0


async def test_two_replicas_deliver_each_event_once(
    tmp_path: Path, start_replicas: StartReplicas
) -> None:
    hook = Receiver(secret=SECRET)
    runner, port = await serve(hook)
    try:
        config = tmp_path / "trustyard.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "events": {
                        "endpoints": [
                            {
                                "name": "hook",
                                "url": f"http://127.0.0.1:{port}/hook",
                                "secret": SECRET,
                                "timeout": "5s",
                            }
                        ],
                        "retry": {"initial": "100ms", "max": "300ms"},
                    }
                }
            )
        )
        replicas = start_replicas("--config", str(config))
        async with (
            aiohttp.ClientSession(base_url=replicas.a.url) as a,
            aiohttp.ClientSession(base_url=replicas.b.url) as b,
        ):

            async def pushes(session: aiohttp.ClientSession, side: str) -> list[str]:
                digests = []
                for n in range(PUSHES):
                    for repository in REPOSITORIES:
                        digest, _ = await push_image(session, repository, f"{side}{n}")  # type: ignore[arg-type]
                        digests.append(digest)
                return digests

            pushed = [d for ds in await asyncio.gather(pushes(a, "a"), pushes(b, "b")) for d in ds]
            expected = len(pushed)
            deadline = time.monotonic() + PATIENCE
            while True:
                async with a.get("/api/v1/events/deliveries") as resp:
                    listing = await resp.json()
                if len(hook.received) >= expected and listing["counts"] == {
                    "pending": 0,
                    "failed": 0,
                }:
                    break
                assert time.monotonic() < deadline, (len(hook.received), listing)
                await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    events = [json.loads(r.body) for r in hook.received]
    assert all(r.signature_problem is None for r in hook.received)
    ids = Counter(e["id"] for e in events)
    assert [i for i, n in ids.items() if n > 1] == []  # none twice
    assert sorted(e["data"]["digest"] for e in events) == sorted(pushed)
    # In outbox order per repository, whichever replica sent each.
    for repository in REPOSITORIES:
        order = [
            int(r.headers["Trustyard-Delivery"])
            for r, e in zip(hook.received, events, strict=True)
            if e["data"]["repository"] == repository
        ]
        assert order == sorted(order)
