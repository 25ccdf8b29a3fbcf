"""What removes an upload session's bytes — a client's DELETE, `trustyard gc`, a replica's
stale-upload cleanup — takes the session's lock, as the requests writing it do, and leaves alone
a session that another replica is writing or committing: on SQLite and PostgreSQL, on disk and
(for the cancellation) on S3.

Without the lock, a DELETE sent to replica B while replica A streams a chunk in removes the
spool under A (A's chunk fails, or is answered 202 into a session that no longer exists), and a
sweep while A commits the blob removes the upload A is placing it from. Each race is held open
by the chunk's own body, paused by the test until the other side has been answered (no sleeps).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from storage.metadata.coordination import upload_key
from tests.replicas.conftest import Replicas, StartReplicas
from tests.replicas.test_concurrent_appends import (
    HELD_AFTER,
    chunk_headers,
    until_held,
)

#: A chunk of several batches (the server hashes and writes 1 MiB at a time).
CHUNK = 3 * 1024 * 1024 + 99
#: Only turns a hang into a failure.
PATIENCE = 60.0


def paused(data: bytes, go_on: asyncio.Event) -> AsyncIterator[bytes]:
    """A request body that sends less than a batch, then waits for `go_on` (so nothing of it
    is written meanwhile) before the rest."""

    async def body() -> AsyncIterator[bytes]:
        yield data[:HELD_AFTER]
        await go_on.wait()
        yield data[HELD_AFTER:]

    return body()


async def refused_cancellation(resp: aiohttp.ClientResponse, location: str, end: int) -> None:
    """The answer to a DELETE sent while another request writes the session."""
    body: dict[str, Any] = await resp.json()
    assert resp.status == 400, body
    assert [e["code"] for e in body["errors"]] == ["BLOB_UPLOAD_INVALID"], body
    assert body["errors"][0]["detail"]["reason"] == "another request is writing this upload"
    assert body["errors"][0]["message"].startswith("another request is writing this upload")
    assert resp.headers["Range"] == f"0-{max(end, 0)}"
    assert resp.headers["Location"] == location


async def blob_is(session: aiohttp.ClientSession, name: str, data: bytes) -> None:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with session.get(f"/v2/{name}/blobs/{digest}") as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.read() == data


async def test_a_cancellation_while_another_replica_writes_is_refused_and_loses_nothing(
    start_replicas: StartReplicas, store_args: list[str]
) -> None:
    replicas = start_replicas(*store_args)
    data = os.urandom(2 * CHUNK + 555)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with (
        aiohttp.ClientSession(base_url=replicas.a.url) as a,
        aiohttp.ClientSession(base_url=replicas.b.url) as b,
    ):
        async with a.post("/v2/team/cancelled/blobs/uploads/") as resp:
            location = resp.headers["Location"]
        key = upload_key(location.rsplit("/", 1)[1])

        # A chunk streams into A: a DELETE to B, and to A itself, is refused meanwhile.
        go_on = asyncio.Event()
        first = asyncio.create_task(
            a.patch(location, data=paused(data[:CHUNK], go_on), headers=chunk_headers(0, CHUNK))
        )
        try:
            await until_held(replicas, key)
            for session in (b, a):
                async with session.delete(location) as resp:
                    await refused_cancellation(resp, location, -1)
        finally:
            go_on.set()
        async with await first as resp:
            assert resp.status == 202, await resp.text()
            assert resp.headers["Range"] == f"0-{CHUNK - 1}"

        # The last chunk is committed through A: a DELETE to B meanwhile is refused, and the
        # blob answered 201 is there, whole, through both replicas.
        go_on = asyncio.Event()
        last = asyncio.create_task(
            a.put(
                f"{location}?digest={digest}",
                data=paused(data[CHUNK:], go_on),
                headers=chunk_headers(CHUNK, len(data) - CHUNK),
            )
        )
        try:
            await until_held(replicas, key)
            async with b.delete(location) as resp:
                await refused_cancellation(resp, location, CHUNK - 1)
        finally:
            go_on.set()
        async with await last as resp:
            assert resp.status == 201, await resp.text()
        for session in (a, b):
            await blob_is(session, "team/cancelled", data)

        # Finished: the session is unknown now, to a DELETE too.
        async with b.delete(location) as resp:
            assert resp.status == 404, await resp.text()
            assert [e["code"] for e in (await resp.json())["errors"]] == ["BLOB_UPLOAD_UNKNOWN"]

        # With nobody writing, a DELETE on either replica cancels: the session and its bytes go.
        async with b.post("/v2/team/cancelled/blobs/uploads/") as resp:
            other = resp.headers["Location"]
        async with b.patch(other, data=data[:100], headers=chunk_headers(0, 100)) as resp:
            assert resp.status == 202
        async with a.delete(other) as resp:
            assert resp.status == 204, await resp.text()
        async with b.get(other) as resp:
            assert resp.status == 404


async def stale_sessions(
    replicas: Replicas, a: aiohttp.ClientSession, name: str
) -> tuple[str, str]:
    """Two sessions with a chunk each: `busy` (written meanwhile) and `idle`."""
    locations = []
    for _ in range(2):
        async with a.post(f"/v2/{name}/blobs/uploads/") as resp:
            location = resp.headers["Location"]
        async with a.patch(location, data=b"x" * 10, headers=chunk_headers(0, 10)) as resp:
            assert resp.status == 202
        locations.append(location)
    return locations[0], locations[1]


async def test_gc_keeps_a_stale_session_another_replica_is_committing(
    start_replicas: StartReplicas, tmp_path: Path
) -> None:
    """`trustyard gc` with every session stale (`stale_after: 0s`) while replica A commits the
    blob of one: that one is kept, and the blob answered 201 is whole; the idle one goes."""
    replicas = start_replicas()
    data = b"x" * 10 + os.urandom(CHUNK)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    config = tmp_path / "gc.yaml"
    config.write_text(yaml.safe_dump({"uploads": {"stale_after": "0s"}}))
    async with aiohttp.ClientSession(base_url=replicas.a.url) as a:
        busy, idle = await stale_sessions(replicas, a, "team/swept")
        go_on = asyncio.Event()
        last = asyncio.create_task(
            a.put(
                f"{busy}?digest={digest}",
                data=paused(data[10:], go_on),
                headers=chunk_headers(10, len(data) - 10),
            )
        )
        try:
            await until_held(replicas, upload_key(busy.rsplit("/", 1)[1]))
            process = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "registry", "gc", "--json"],
                *["--data-dir", str(replicas.data_dir), "--config", str(config)],
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **replicas.env()},
            )
            out, err = await process.communicate()
            assert process.returncode == 0, err
        finally:
            go_on.set()
        assert json.loads(out)["uploads"] == [idle.rsplit("/", 1)[1]], out
        async with await last as resp:
            assert resp.status == 201, await resp.text()
        await blob_is(a, "team/swept", data)
        async with a.get(idle) as resp:
            assert resp.status == 404


async def test_a_replicas_stale_upload_cleanup_keeps_a_session_being_written(
    start_replicas: StartReplicas, tmp_path: Path
) -> None:
    """A replica whose cleanup finds every session stale starts while replica A streams a chunk
    into one: its first round (at start-up) keeps that one and drops the idle one; the chunk is
    answered 202 and the upload finishes."""
    replicas = start_replicas()
    data = b"x" * 10 + os.urandom(CHUNK)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    config = tmp_path / "sweeping.yaml"
    config.write_text(yaml.safe_dump({"uploads": {"stale_after": "0s", "cleanup_interval": "1h"}}))
    async with aiohttp.ClientSession(base_url=replicas.a.url) as a:
        busy, idle = await stale_sessions(replicas, a, "team/cleaned")
        busy_id, idle_id = busy.rsplit("/", 1)[1], idle.rsplit("/", 1)[1]
        go_on = asyncio.Event()
        chunk = asyncio.create_task(
            a.patch(busy, data=paused(data[10:], go_on), headers=chunk_headers(10, len(data) - 10))
        )
        try:
            await until_held(replicas, upload_key(busy_id))
            sweeper = start_replicas("--config", str(config), count=1).a
            deadline = time.monotonic() + PATIENCE
            kept = f"stale upload {busy_id} is being written: kept for now"
            while f"dropped stale upload {idle_id}" not in sweeper.log() or kept not in (
                sweeper.log()
            ):
                assert time.monotonic() < deadline, sweeper.log()
                await asyncio.sleep(0.05)
        finally:
            go_on.set()
        async with await chunk as resp:
            assert resp.status == 202, await resp.text()
            assert resp.headers["Range"] == f"0-{len(data) - 1}"
        async with a.put(f"{busy}?digest={digest}") as resp:
            assert resp.status == 201, await resp.text()
        await blob_is(a, "team/cleaned", data)
        async with a.get(idle) as resp:
            assert resp.status == 404
