"""Events from a registry to a receiver on loopback: CloudEvents bodies with a valid HMAC, the
outbox written with the change, retries with backoff in order per repository, give-up, the
deliveries API, and pushes that do not wait for a failing endpoint."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.context import CONTEXT
from registry.events.hub import EVENTS
from registry.pipeline.observers import Change, EventSender
from tests.conftest import registry_metadata_url
from tests.events.receiver import Receiver, serve, until_drained
from tests.oci import OCI_MANIFEST, descriptor, push_blob, push_image
from tests.server_process import port_of, reserve_port

SECRET = "endpoint-secret-0123456789"


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    hook = Receiver(secret=SECRET)
    runner, port = await serve(hook)
    yield hook, port
    if hook.hold is not None:
        hook.hold.set()  # a failed test must not leave the sender parked at shutdown
    await runner.cleanup()


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port refusing connections for the whole test: bound by us, never listening."""
    sock = reserve_port()
    yield port_of(sock)
    sock.close()


def events_section(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "source": "/trustyard/test",
        "endpoints": [
            {
                "name": "hook",
                "url": f"http://127.0.0.1:{port}/hook",
                "secret": SECRET,
                "headers": {"X-Team": "platform"},
                # Generous: an attempt the receiver recorded but answered after the timeout
                # (a loaded machine) would be sent again, and counted twice.
                "timeout": "30s",
            }
        ],
        "retry": {"initial": "50ms", "max": "200ms"},
        "pull_events": {"mode": "sampled", "rate": 1},
        **extra,
    }


async def until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_push_event_is_a_signed_cloudevent(
    start_client: Any, receiver: tuple[Receiver, int]
) -> None:
    hook, port = receiver
    client: TestClient = await start_client(events=events_section(port))
    digest, body = await push_image(client, "prod/app", "v1")
    await until(lambda: len(hook.received) == 1)
    got = hook.received[0]
    assert got.signature_problem is None
    assert got.headers["Content-Type"].startswith("application/cloudevents+json")
    assert got.headers["X-Team"] == "platform"
    event = got.event
    assert event["specversion"] == "1.0" and event["type"] == "dev.trustyard.image.pushed"
    assert event["source"] == "/trustyard/test" and event["subject"] == "prod/app:v1"
    assert len(event["id"]) == 32 and event["time"].endswith("Z")
    assert event["data"] == {
        "repository": "prod/app",
        "tag": "v1",
        "digest": digest,
        "mediaType": OCI_MANIFEST,
        "size": len(body),
        "actor": "anonymous",
    }


async def test_pull_delete_and_denial_events(
    start_client: Any, receiver: tuple[Receiver, int], tmp_path: Path
) -> None:
    hook, port = receiver
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nrules:\n  - name: no latest\n"
        "    match: {repositories: ['**'], tags: [latest], on: [push]}\n"
        "    deny: use a version tag\n"
    )
    client: TestClient = await start_client(
        events=events_section(port), policy={"file": str(policy), "reload": False}
    )
    await push_image(client, "prod/app", "v1")
    assert (await client.get("/v2/prod/app/manifests/v1")).status == 200
    assert (await client.delete("/v2/prod/app/manifests/v1")).status == 202
    await push_image(client, "prod/app", "v2")
    resp = await client.put(
        "/v2/prod/app/manifests/latest",
        data=(await (await client.get("/v2/prod/app/manifests/v2")).read()),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 403
    await until(lambda: len(hook.received) == 6)
    assert hook.types() == [
        "image.pushed",
        "image.pulled",
        "tag.deleted",
        "image.pushed",
        "image.pulled",
        "policy.denied",
    ]
    denied = hook.received[-1].event["data"]
    assert denied["action"] == "push" and denied["reference"] == "latest"
    assert denied["reason"] == 'rule "no latest": use a version tag'


async def test_retries_in_order_then_deliveries_api(
    start_client: Any, receiver: tuple[Receiver, int]
) -> None:
    hook, port = receiver
    hook.failures = 3
    hook.hold = asyncio.Event()  # the fourth attempt waits: the outbox is then looked at still
    section = events_section(port)
    section["endpoints"][0]["timeout"] = "60s"  # the held attempt must not time out meanwhile
    client: TestClient = await start_client(events=section)
    for tag in ("v1", "v2", "v3"):
        await push_image(client, "prod/app", tag)

    async def deliveries() -> dict[str, Any]:
        resp = await client.get("/api/v1/events/deliveries")
        assert resp.status == 200
        return dict(await resp.json())

    # Three refusals of v1, each recorded, then the fourth attempt is held at the receiver.
    deadline = time.monotonic() + 60  # only turns a hang into a failure
    while True:
        listing = await deliveries()
        if listing["deliveries"] and listing["deliveries"][0]["attempts"] == 3:
            break
        assert time.monotonic() < deadline, f"three failed attempts never recorded: {listing}"
        await asyncio.sleep(0.02)
    assert hook.refused == 3 and hook.received == []
    assert listing["counts"] == {"pending": 3, "failed": 0}
    first, *rest = listing["deliveries"]
    assert (first["type"], first["state"], first["last_error"]) == (
        "dev.trustyard.image.pushed",
        "pending",
        "HTTP 503",
    )
    # v2 and v3 wait behind v1 (order per repository): never tried.
    assert [(d["attempts"], d["last_error"]) for d in rest] == [(0, None), (0, None)]

    hook.hold.set()
    await until(lambda: len(hook.received) == 3)
    assert [r.event["data"]["tag"] for r in hook.received] == ["v1", "v2", "v3"]
    assert hook.refused == 3
    await until_drained(client)
    resp = await client.get("/api/v1/events/deliveries?state=lost")
    assert resp.status == 400


async def test_a_push_does_not_wait_for_its_endpoint(
    start_client: Any, receiver: tuple[Receiver, int]
) -> None:
    """The push is answered while the endpoint still holds its event (an endpoint that never
    answers cannot hold a push up): the condition itself, not how long the push took."""
    hook, port = receiver
    hook.hold = asyncio.Event()  # every delivery waits at the receiver until set
    client: TestClient = await start_client(events=events_section(port))
    async with asyncio.timeout(60):  # only turns a push that waits into a failure
        await push_image(client, "prod/app", "v1")
    assert hook.received == []  # answered, and the event not delivered yet
    hook.hold.set()
    await until(lambda: len(hook.received) == 1)
    assert hook.received[0].event["type"] == "dev.trustyard.image.pushed"


async def test_failing_endpoint_given_up_and_listed(start_client: Any, dead_port: int) -> None:
    section = events_section(
        dead_port, retry={"initial": "10ms", "max": "10ms", "give_up_after": 0}
    )
    client: TestClient = await start_client(events=section)
    await push_image(client, "prod/app", "v1")

    async def failed() -> list[dict[str, Any]]:
        body = await (await client.get("/api/v1/events/deliveries?state=failed")).json()
        return body["deliveries"]

    deadline = time.monotonic() + 60  # only turns a hang into a failure
    while not (rows := await failed()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert rows[0]["endpoint"] == "hook" and rows[0]["type"] == "dev.trustyard.image.pushed"
    assert rows[0]["attempts"] == 1 and "ClientConnectorError" in rows[0]["last_error"]


async def test_outbox_rows_only_with_the_change(start_client: Any, dead_port: int) -> None:
    """A push refused for a missing blob writes no event; a stored one writes exactly one per
    endpoint, in the same transaction (checked in the database while the sender is stopped)."""
    section = events_section(dead_port, retry={"initial": "1h", "max": "1h"})
    client: TestClient = await start_client(events=section)
    config = b'{"architecture": "amd64", "os": "linux"}'
    await push_blob(client, "prod/app", config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", b"missing")],
    }
    resp = await client.put(
        "/v2/prod/app/manifests/v1",
        data=json.dumps(manifest).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 400  # MANIFEST_BLOB_UNKNOWN
    db = client.server.app[CONTEXT].db
    assert await db.read("SELECT COUNT(*) FROM event_outbox") == [(0,)]
    await push_image(client, "prod/app", "v1")
    assert await db.read("SELECT endpoint, repository, type FROM event_outbox") == [
        ("hook", "prod/app", "dev.trustyard.image.pushed")
    ]


async def test_endpoint_event_filter_and_library_tag(
    start_client: Any, receiver: tuple[Receiver, int]
) -> None:
    hook, port = receiver
    section = events_section(port, library_repositories=["library/**"])
    section["endpoints"][0]["events"] = ["library.tag.updated"]
    client: TestClient = await start_client(events=section)
    first, _ = await push_image(client, "library/base", "3")
    second, _ = await push_image(client, "library/base", "3", layers=[b"patched"])
    await push_image(client, "prod/app", "v1")
    await until_drained(client)
    (got,) = hook.received
    assert got.event["type"] == "dev.trustyard.library.tag.updated"
    assert got.event["data"]["previous"] == first and got.event["data"]["digest"] == second


LIBRARY_POLICY = """\
version: 1
library:
  images:
    - name: python
      tags: ["3.12-slim"]
rules: []
"""


async def test_library_tag_updated_when_the_policy_library_tag_moves(
    start_client: Any, receiver: tuple[Receiver, int], tmp_path: Path
) -> None:
    """The policy's `library:` section says what a library tag is: a declared tag moving to a new
    digest (its tag history) sends `library.tag.updated`, written with the history row; the
    first push of a tag, an undeclared tag, and the deprecated globs inside the library
    namespace send none (no duplicate when both are configured)."""
    hook, port = receiver
    policy = tmp_path / "policy.yaml"
    policy.write_text(LIBRARY_POLICY)
    section = events_section(port, library_repositories=["library/**", "bases/**"])
    section["endpoints"][0]["events"] = ["library.tag.updated"]
    client: TestClient = await start_client(
        events=section, policy={"file": str(policy), "reload": False}
    )
    first, _ = await push_image(client, "library/python", "3.12-slim")
    await push_image(client, "library/python", "edge")
    await push_image(client, "library/python", "edge", layers=[b"edge 2"])  # not declared
    second, body = await push_image(client, "library/python", "3.12-slim", layers=[b"patched"])
    await push_image(client, "library/python", "3.12-slim", layers=[b"patched"])  # same digest
    await until_drained(client)
    (got,) = hook.received
    assert got.signature_problem is None
    event = got.event
    assert event["type"] == "dev.trustyard.library.tag.updated"
    assert event["subject"] == "library/python:3.12-slim"
    assert event["data"] == {
        "repository": "library/python",
        "tag": "3.12-slim",
        "digest": second,
        "mediaType": OCI_MANIFEST,
        "size": len(body),
        "actor": "anonymous",
        "previous": first,
        "rebuild": True,
        "library": "python:3.12-slim",
    }
    # Outside the library namespace the deprecated globs still report tag moves at the push.
    await push_image(client, "bases/debian", "12")
    moved, _ = await push_image(client, "bases/debian", "12", layers=[b"patched"])
    await until(lambda: len(hook.received) == 2)
    assert hook.received[1].event["data"]["digest"] == moved


async def test_a_library_move_in_a_batch_run_again_is_counted_and_delivered_once(
    start_client: Any,
    receiver: tuple[Receiver, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A push moving a declared library tag shares its write batch with a job the database
    refuses: on PostgreSQL the pipelined batch is rolled back and run again job by job, so the
    tag's move (and its `library.tag.updated` row) is built twice. The push counts the rows of
    the run that committed only, and the event is delivered once."""
    hook, port = receiver
    policy = tmp_path / "policy.yaml"
    policy.write_text(LIBRARY_POLICY)
    section = events_section(port)
    section["endpoints"][0]["events"] = ["library.tag.updated"]  # the push stages no other row
    client: TestClient = await start_client(
        events=section, policy={"file": str(policy), "reload": False}
    )
    app = client.server.app
    db = app[CONTEXT].db
    await push_image(client, "library/python", "3.12-slim")
    await db.start_upload("taken", "library/python")

    async def clash(conn: Any) -> None:
        """Refused by the database (the upload id is taken), after the push's job was sent."""
        await conn.execute(
            "INSERT INTO uploads (id, repository, started_at) VALUES ('taken', 'other', 0)"
        )

    write = db.write
    refused: list[BaseException] = []

    async def with_a_refused_job(job: Any) -> Any:
        """The manifest's write and the refused job, submitted in the same turn: one batch."""
        if not job.__qualname__.endswith("put_manifest.<locals>.store"):
            return await write(job)  # the blobs' uploads
        pushed = asyncio.ensure_future(write(job))
        other = asyncio.ensure_future(write(clash))
        try:
            return await pushed
        finally:
            refused.extend(await asyncio.gather(other, return_exceptions=True))

    announced: list[int] = []
    library_moved = app[EVENTS].library_moved

    def counting(actor: str) -> Any:
        rows = library_moved(actor)

        def announce(move: Any) -> Any:
            announced.append(1)
            return rows(move)

        return announce

    counted: list[int] = []
    after = EventSender.after

    async def recording(self: EventSender, change: Change) -> None:
        counted.append(change.outbox_rows)
        await after(self, change)

    monkeypatch.setattr(app[EVENTS], "library_moved", counting)
    monkeypatch.setattr(EventSender, "after", recording)
    monkeypatch.setattr(db, "write", with_a_refused_job)
    second, _ = await push_image(client, "library/python", "3.12-slim", layers=[b"patched"])
    monkeypatch.setattr(db, "write", write)
    (error,) = refused
    assert "duplicate key" in str(error) or "UNIQUE constraint" in str(error), error
    # The move was built once per run of the batch: twice where it was run again.
    assert len(announced) == (2 if registry_metadata_url() else 1)
    assert counted == [1]
    await until_drained(client)
    (got,) = hook.received
    assert got.event["type"] == "dev.trustyard.library.tag.updated"
    assert got.event["data"]["digest"] == second
