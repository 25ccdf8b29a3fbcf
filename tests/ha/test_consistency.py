"""One registry, three replicas: what one replica decides holds on the others.

Against the package's cluster (three replicas on one PostgreSQL and one S3 bucket, behind
HAProxy, enforcing `tests.ha.conftest.POLICY`, sending events to one endpoint):

* the immutable-tag race: many pushes of `v1`, each a different manifest, sent at once to all
  replicas: exactly one is answered 201, every other the immutability refusal naming the
  winner, and every replica resolves `v1` to the winner;
* quarantine across replicas: a signature pushed through replica A lets replicas B and C serve
  the quarantined image within a second (they had refused it, and remembered the refusal);
  the signature deleted through A quarantines the image on B and C again within a second;
* events: pushes spread over the replicas are delivered to the endpoint exactly once each, in
  order per repository, whichever replica sent them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.ha.cluster import Cluster
from tests.ha.receiver_thread import ReceiverThread
from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor, error_codes, push_blob
from tests.oci import push_image as push_image_via
from tests.propagation import Wait, check_within, poll_until
from tests.signing import push_cosign_signature, sign, simple_signing_payload

UNSIGNED = 'rule "signed is signed by release": needs a signature by release; found no signature'

#: The promise: a change through one replica decides pulls on every other within this.
WITHIN = 1.0
#: Only turns a hang into a failure; latencies are asserted separately.
PATIENCE = 60.0


@pytest.fixture
async def sessions(cluster: Cluster) -> AsyncIterator[dict[str, aiohttp.ClientSession]]:
    """A client session per replica (by name) and one of the balancer (`lb`)."""
    urls = {name: replica.url for name, replica in cluster.replicas.items()}
    opened = {name: aiohttp.ClientSession(base_url=url) for name, url in urls.items()}
    opened["lb"] = aiohttp.ClientSession(base_url=cluster.url)
    try:
        yield opened
    finally:
        for session in opened.values():
            await session.close()


async def push_image(session: aiohttp.ClientSession, name: str, reference: str) -> str:
    """Push a small image (tests.oci.push_image over a plain session); its digest."""
    digest, _ = await push_image_via(session, name, reference)  # type: ignore[arg-type]
    return digest


async def head_digest(session: aiohttp.ClientSession, name: str, reference: str) -> str | None:
    """What `reference` resolves to on this replica (None: 404)."""
    async with session.head(
        f"/v2/{name}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
    ) as resp:
        if resp.status == 404:
            return None
        assert resp.status == 200, resp.status
        return resp.headers["Docker-Content-Digest"]


# -- the immutable-tag race -----------------------------------------------------------------------

ROUNDS = 3
CONTENDERS = 12


def race_layer(round_number: int) -> bytes:
    """The one layer every contender of a round shares."""
    return f"race layer {round_number}".encode()


def contender(round_number: int, number: int) -> tuple[bytes, bytes]:
    """(config, manifest) of one contender: a different manifest for each."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": number}).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, race_layer(round_number))],
        }
    ).encode()
    return config, manifest


async def put_tag(
    session: aiohttp.ClientSession, repo: str, manifest: bytes
) -> tuple[int, dict[str, Any]]:
    """PUT `manifest` as `repo:v1`: the status, and the error body of a refusal."""
    async with session.put(
        f"/v2/{repo}/manifests/v1", data=manifest, headers={"Content-Type": OCI_MANIFEST}
    ) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if resp.status != 201 else {})


async def test_racing_pushes_of_an_immutable_tag_across_replicas_leave_one_winner(
    cluster: Cluster, sessions: dict[str, aiohttp.ClientSession]
) -> None:
    names = sorted(cluster.replicas)
    for round_number in range(ROUNDS):
        repo = f"race/app{round_number}"
        entries = [contender(round_number, n) for n in range(CONTENDERS)]
        for config, _ in entries:
            await push_blob(sessions["r0"], repo, config)  # type: ignore[arg-type]
        await push_blob(sessions["r0"], repo, race_layer(round_number))  # type: ignore[arg-type]
        digests = [descriptor(OCI_MANIFEST, manifest)["digest"] for _, manifest in entries]
        # All at once, spread over the replicas.
        answers = await asyncio.gather(
            *(
                put_tag(sessions[names[n % len(names)]], repo, manifest)
                for n, (_, manifest) in enumerate(entries)
            )
        )
        statuses = [status for status, _ in answers]
        assert statuses.count(201) == 1, (repo, statuses, answers)
        winner = digests[statuses.index(201)]
        refusal = (
            f'rule "release tags are immutable": tag v1 already points to {winner[:19]}…; '
            "push a new tag"
        )
        for number, (status, body) in enumerate(answers):
            if status == 201:
                continue
            assert status == 403, (number, status, body)
            assert error_codes(body) == ["DENIED"], body
            assert body["errors"][0]["message"] == refusal
        for name in names:
            assert await head_digest(sessions[name], repo, "v1") == winner, name
            for digest in digests:
                if digest != winner:  # a refused manifest is not stored
                    assert await head_digest(sessions[name], repo, digest) is None, name


# -- quarantine across replicas -------------------------------------------------------------------


async def pull(session: aiohttp.ClientSession, name: str, reference: str) -> tuple[int, str]:
    """(200, "") when allowed, else the status and the DENIED message."""
    async with session.get(
        f"/v2/{name}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
    ) as resp:
        if resp.status == 200:
            return 200, ""
        body = await resp.json()
        assert error_codes(body) == ["DENIED"], body
        return resp.status, body["errors"][0]["message"]


async def until_pull(
    session: aiohttp.ClientSession, name: str, reference: str, status: int
) -> Wait:
    """Pull until the answer is `status`; when it was (monotonic), and the slowest pull."""

    async def answered() -> bool:
        return (await pull(session, name, reference))[0] == status

    return await poll_until(answered, PATIENCE, f"never {status}")


async def test_a_signature_pushed_through_one_replica_lifts_quarantine_on_the_others(
    cluster: Cluster,
    sessions: dict[str, aiohttp.ClientSession],
    release_key: ec.EllipticCurvePrivateKey,
) -> None:
    a, others = sessions["r0"], [sessions["r1"], sessions["r2"]]
    digest = await push_image(a, "signed/app", "v1")
    # Refused everywhere, twice: each replica has decided, and remembers it.
    for session in [a, *others, a, *others]:
        assert await pull(session, "signed/app", "v1") == (403, UNSIGNED)

    payload = simple_signing_payload(f"{cluster.host}/signed/app", digest)
    await push_cosign_signature(a, "signed/app", digest, payload, sign(release_key, payload))  # type: ignore[arg-type]
    signed = time.monotonic()
    lifted = [await until_pull(session, "signed/app", "v1", 200) for session in others]
    check_within(signed, lifted, WITHIN, "lifting the quarantine on the other replicas")
    # Through the balancer, every replica in turn serves it now.
    for _ in cluster.replicas:
        assert await pull(sessions["lb"], "signed/app", "v1") == (200, "")

    # The evidence withdrawn through A: B and C refuse again, as promptly.
    sig_tag = digest.replace(":", "-") + ".sig"
    async with a.delete(f"/v2/signed/app/manifests/{sig_tag}") as resp:
        assert resp.status == 202, await resp.text()
    withdrawn = time.monotonic()
    refused = [await until_pull(session, "signed/app", "v1", 403) for session in others]
    check_within(withdrawn, refused, WITHIN, "refusing again on the other replicas")
    for session in [a, *others]:
        assert await pull(session, "signed/app", "v1") == (403, UNSIGNED)


# -- events exactly once --------------------------------------------------------------------------

EVENT_REPOSITORIES = ("events/one", "events/two")
PUSHES_PER_CLIENT = 8


async def test_events_of_pushes_spread_over_replicas_arrive_exactly_once(
    cluster: Cluster, sessions: dict[str, aiohttp.ClientSession], hook: ReceiverThread
) -> None:
    async def pushes(session: aiohttp.ClientSession, side: str) -> list[str]:
        digests = []
        for n in range(PUSHES_PER_CLIENT):
            for repository in EVENT_REPOSITORIES:
                digests.append(await push_image(session, repository, f"{side}{n}"))
        return digests

    # Each replica directly, and the balancer (which spreads its requests over all three).
    clients = ["r0", "r1", "r2", "lb"]
    pushed = [
        d for ds in await asyncio.gather(*(pushes(sessions[c], c) for c in clients)) for d in ds
    ]

    def ours() -> list[tuple[dict[str, str], dict[str, Any]]]:
        return [
            (r.headers, r.event)
            for r in list(hook.receiver.received)
            if r.event["data"].get("repository") in EVENT_REPOSITORIES
        ]

    deadline = time.monotonic() + PATIENCE
    while True:
        drained = True
        for name in cluster.replicas:
            async with sessions[name].get("/api/v1/events/deliveries") as resp:
                listing = await resp.json()
            drained = drained and listing["counts"] == {"pending": 0, "failed": 0}
        if drained and len(ours()) >= len(pushed):
            break
        assert time.monotonic() < deadline, (len(ours()), len(pushed), listing)
        await asyncio.sleep(0.05)  # polling interval of the wait above

    received = ours()
    assert all(r.signature_problem is None for r in hook.receiver.received)
    ids = Counter(event["id"] for _, event in received)
    assert [i for i, n in ids.items() if n > 1] == []  # none twice
    assert sorted(event["data"]["digest"] for _, event in received) == sorted(pushed)
    assert {event["type"] for _, event in received} == {"dev.trustyard.image.pushed"}
    for repository in EVENT_REPOSITORIES:
        order = [
            int(headers["Trustyard-Delivery"])
            for headers, event in received
            if event["data"]["repository"] == repository
        ]
        assert order == sorted(order), repository
