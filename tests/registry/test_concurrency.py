"""Many clients at once: every upload session one client opens is visible to its next request."""

from __future__ import annotations

import asyncio
import os

from tests.oci import sha256


async def test_concurrent_small_uploads_never_lose_a_session(client):
    async def upload(worker: int) -> list[int]:
        statuses = []
        for _ in range(25):
            data = os.urandom(4096)
            start = await client.post(f"/v2/load/w{worker}/blobs/uploads/")
            statuses.append(start.status)
            done = await client.put(f"{start.headers['Location']}?digest={sha256(data)}", data=data)
            statuses.append(done.status)
            head = await client.head(f"/v2/load/w{worker}/blobs/{sha256(data)}")
            statuses.append(head.status)
        return statuses

    results = await asyncio.gather(*(upload(worker) for worker in range(16)))
    # Each of 25 rounds per worker: upload started (202), committed (201), found (200).
    assert results == [[202, 201, 200] * 25] * 16
