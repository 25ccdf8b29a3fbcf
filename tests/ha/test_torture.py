"""The storage torture test (tests/storage/test_torture.py) against the replicated form.

The same storm — pushers (chunked, monolithic, mounted), taggers, referrer pushers, tag and
manifest deleters — goes through HAProxy to three replicas on one PostgreSQL and one S3 bucket,
so one push's requests land on different replicas. Meanwhile a replica at a time is killed with
`kill -9` and started again, and two `trustyard gc` loops (grace period
0.3 s, sometimes killed half way) collect on the shared database and bucket at once. At the end
every replica, asked directly, resolves every tag acknowledged with 201 and not deleted by a
client to its manifest, and serves every blob a surviving manifest or referrer names, byte for
byte.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.ha.cluster import Cluster
from tests.ha.conftest import cluster_of
from tests.postgres_server import PostgresServer
from tests.storage.s3_server import SeaweedS3
from tests.storage.test_torture import (
    CI_SECONDS,
    Down,
    Ledger,
    Storm,
    collector,
    manifest_deleter,
    pusher,
    referrer_pusher,
    tag_deleter,
    tagger,
    verify,
)

#: The storm goes on (up to this many times `CI_SECONDS`) until it has seen enough of each kind
#: of event. Longer than the single server's bound: a replica killed takes seconds to come back
#: on a busy machine (boto3's import alone), and the kills wait for it.
HA_CAP = 8


@dataclass
class Front:
    """What the storm's workers need of "the server": the balancer's URL, and a local folder
    for `trustyard gc --data-dir` (everything it collects is in PostgreSQL and S3)."""

    url: str
    data_dir: Path


@pytest.fixture(scope="module")
def torture_cluster(postgres: PostgresServer, ha_seaweed: SeaweedS3) -> Iterator[Cluster]:
    """A cluster of its own: its collections must not race the other modules' tests."""
    with cluster_of(postgres, ha_seaweed) as running:
        yield running


@dataclass
class CountingStorm(Storm):
    """The storm, counting the answers it got (printed: what a slow storm was answered)."""

    answers: Counter[str] = field(default_factory=Counter)

    async def call(
        self, method: str, path: str, data: bytes | None = None, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        """One request, its status counted (`down` when nothing answered)."""
        try:
            status, answer_headers, body = await super().call(method, path, data, **headers)
        except Down:
            self.answers[f"{method} down"] += 1
            raise
        self.answers[f"{method} {status}"] += 1
        if status >= 400:  # whose refusal: the balancer's page or a replica's error code
            self.answers[f"{status} {body[:120].decode(errors='replace')}"] += 1
        return status, answer_headers, body


async def replica_killer(storm: Storm, cluster: Cluster) -> None:
    """`kill -9` a replica at a random moment, start it again, wait a moment; over and over. One
    replica is down at a time at most: two always serve."""
    while storm.running:
        await asyncio.sleep(storm.rng.uniform(0.8, 2.0))
        if not storm.running:
            return
        victim = storm.rng.choice(sorted(cluster.replicas))
        cluster.kill(victim)
        storm.ledger.kills += 1
        await asyncio.to_thread(cluster.restart, victim)


def test_nothing_acknowledged_is_lost_across_replicas(
    torture_cluster: Cluster, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = torture_cluster
    # `trustyard gc` runs on the cluster's database, whatever the test's environment says.
    monkeypatch.setenv("TRUSTYARD_METADATA", cluster.metadata_url)
    seconds = request.config.getoption("--soak") or CI_SECONDS
    seed = int(os.environ.get("TORTURE_SEED", time.time()))
    print(f"torture seed {seed} (replicated, {seconds}s)")
    ledger = Ledger()
    front = Front(cluster.url, cluster.folder / "gc" / "data")
    front.data_dir.mkdir(parents=True)

    async def storm() -> CountingStorm:
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            began = time.monotonic()
            state = CountingStorm(
                front,  # type: ignore[arg-type]  # the workers use only its url and data_dir
                session,
                ledger,
                began + seconds,
                began + HA_CAP * seconds,
                random.Random(seed),
            )
            await asyncio.gather(
                *(pusher(state, f"p{n}") for n in range(4)),
                *(tagger(state, f"t{n}") for n in range(2)),
                referrer_pusher(state, "r0"),
                tag_deleter(state),
                manifest_deleter(state, "d0"),
                collector(state, cluster.config_path),
                collector(state, cluster.config_path),  # two collections at once
                replica_killer(state, cluster),
            )
            return state

    state = asyncio.run(storm())
    for name, replica in cluster.replicas.items():
        assert replica.process.poll() is None, f"{name} is not running"
    blobs = {name: asyncio.run(verify(r, ledger)) for name, r in cluster.replicas.items()}
    print(
        f"torture replicated: {ledger.acks} acknowledged pushes, {len(ledger.tags)} tags and "
        f"{len(ledger.referrers)} referrers checked on every replica, blobs read back {blobs}, "
        f"{ledger.kills} kill -9, {ledger.collections} collections; answers "
        f"{dict(sorted(state.answers.items()))}"
    )
    # The storm really happened: pushes acknowledged, replicas killed, collections run.
    assert ledger.enough(), ledger
    assert len(ledger.tags) >= 5
