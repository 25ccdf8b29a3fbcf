"""`kill -9` of the replica serving a push, through HAProxy: the client's retry completes through
another replica, and the image is intact on every replica (the killed one too, once back).

* A chunked upload of a large blob (parts in S3) through the balancer: the replica streaming a
  chunk in is killed half way; the client asks the balancer where the upload stands (another
  replica answers), sends the rest from there, and commits; nothing answered 202 is lost.
* docker push of an image with a large layer: the replica receiving the layer is killed while
  the bytes stream in; docker's own retry pushes the image through the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import PUSH_DIGEST, DockerDaemon, get_manifest, make_rootfs_tar
from tests.ha.cluster import Cluster, get
from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor

MIB = 1024 * 1024
#: Only turns a hang into a failure.
PATIENCE = 60.0


@pytest.fixture(autouse=True)
def whole_again(cluster: Cluster) -> Iterator[None]:
    """The package's cluster is whole after each test, even one that failed half way."""
    yield
    for name, replica in cluster.replicas.items():
        if replica.process.poll() is not None:
            cluster.restart(name)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def serving(cluster: Cluster) -> str:
    """The one replica HAProxy has a request in flight with (the test sends only one)."""
    assert cluster.balancer is not None
    deadline = time.monotonic() + PATIENCE
    while True:
        busy = [n for n, row in cluster.balancer.servers().items() if int(row["scur"] or 0) > 0]
        if len(busy) == 1:
            return busy[0]
        assert time.monotonic() < deadline, cluster.balancer.servers()
        await asyncio.sleep(0.01)  # polling interval of the wait above


def intact_everywhere(cluster: Cluster, repo: str, digest: str, data: bytes) -> None:
    """Every replica (and the balancer) serves the blob, byte for byte."""
    for name, server in [*cluster.replicas.items(), ("lb", cluster)]:
        status, _, body = get(f"{server.url}/v2/{repo}/blobs/{digest}")
        assert status == 200, (name, status, body[:200])
        assert body == data, name


async def test_a_chunked_push_cut_by_kill_9_completes_through_another_replica(
    cluster: Cluster,
) -> None:
    repo = "ha/chunked"
    data = os.urandom(24 * MIB)
    digest = sha256(data)
    first = 8 * MIB  # the chunk answered 202 before the kill
    octets = {"Content-Type": "application/octet-stream"}
    async with aiohttp.ClientSession(base_url=cluster.url) as lb:
        async with lb.post(f"/v2/{repo}/blobs/uploads/") as resp:
            assert resp.status == 202, await resp.text()
            location = resp.headers["Location"]
        async with lb.patch(
            location, data=data[:first], headers={**octets, "Content-Range": f"0-{first - 1}"}
        ) as resp:
            assert resp.status == 202, await resp.text()
            assert resp.headers["Range"] == f"0-{first - 1}"
            location = resp.headers["Location"]

        # The next chunk: 6 MiB go out, then the client waits while its replica is killed.
        sent = asyncio.Event()
        killed = asyncio.Event()

        async def cut_chunk() -> AsyncIterator[bytes]:
            for offset in range(first, first + 6 * MIB, MIB):
                yield data[offset : offset + MIB]
            sent.set()
            await killed.wait()
            yield data[first + 6 * MIB :]

        cut = asyncio.create_task(lb.patch(location, data=cut_chunk(), headers=octets))
        await sent.wait()
        victim = await serving(cluster)
        cluster.kill(victim)
        killed.set()
        # The client sees the request fail (HAProxy's 502, or the connection closed).
        with contextlib.suppress(aiohttp.ClientError):
            async with await cut as resp:
                assert resp.status >= 500, (resp.status, await resp.text())

        # The retry: where does the upload stand? Another replica answers through the balancer.
        async with lb.get(location) as resp:
            assert resp.status == 204, await resp.text()
            assert resp.headers["X-Trustyard-Replica"] != victim
            end = int(resp.headers["Range"].split("-")[1])
            location = resp.headers.get("Location", location)
        # Everything answered 202 is kept; nothing is claimed that was never sent.
        assert first - 1 <= end < first + 6 * MIB, end
        async with lb.patch(
            location,
            data=data[end + 1 :],
            headers={**octets, "Content-Range": f"{end + 1}-{len(data) - 1}"},
        ) as resp:
            assert resp.status == 202, await resp.text()
            assert resp.headers["X-Trustyard-Replica"] != victim
            location = resp.headers["Location"]
        separator = "&" if "?" in location else "?"
        async with lb.put(f"{location}{separator}digest={digest}") as resp:
            assert resp.status == 201, await resp.text()
            assert resp.headers["Docker-Content-Digest"] == digest
            assert resp.headers["X-Trustyard-Replica"] != victim

        # The image that names the blob, pushed and pulled through the balancer.
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        async with lb.post(f"/v2/{repo}/blobs/uploads/?digest={sha256(config)}", data=config) as r:
            assert r.status == 201, await r.text()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor(OCI_CONFIG, config),
                "layers": [descriptor(OCI_LAYER, data)],
            }
        ).encode()
        async with lb.put(
            f"/v2/{repo}/manifests/v1", data=manifest, headers={"Content-Type": OCI_MANIFEST}
        ) as resp:
            assert resp.status == 201, await resp.text()

    alive = {n: r for n, r in cluster.replicas.items() if n != victim}
    for name, replica in alive.items():
        assert get_manifest(replica, repo, "v1").body == manifest, name
    cluster.restart(victim)
    intact_everywhere(cluster, repo, digest, data)
    assert get_manifest(cluster.replicas[victim], repo, "v1").body == manifest


def cut_requests(cluster: Cluster, name: str) -> int:
    """How many requests to replica `name` HAProxy saw cut by the server (aborted transfers and
    broken responses)."""
    assert cluster.balancer is not None
    row = cluster.balancer.servers()[name]
    return int(row["srv_abrt"] or 0) + int(row["eresp"] or 0)


async def long_request(cluster: Cluster, push: asyncio.subprocess.Process, hold: float) -> str:
    """The replica serving one request for `hold` seconds on end (the layer streaming in: every
    other request of a push is short)."""
    assert cluster.balancer is not None
    since: dict[str, float] = {}
    deadline = time.monotonic() + PATIENCE
    while True:
        now = time.monotonic()
        busy = {n for n, row in cluster.balancer.servers().items() if int(row["scur"] or 0) > 0}
        since = {name: since.get(name, now) for name in busy}
        for name, start in since.items():
            if now - start >= hold:
                return name
        assert push.returncode is None, "the push ended before a replica was killed"
        assert now < deadline, "no replica received the layer"
        await asyncio.sleep(0.01)  # polling interval of the wait above


@pytest.mark.e2e
async def test_docker_push_cut_by_kill_9_is_retried_through_the_other_replicas(
    dockerd: DockerDaemon, cluster: Cluster, e2e_tmp: Path
) -> None:
    layer = os.urandom(48 * MIB)  # gzip cannot shrink it: 48 MiB stream through one PATCH
    tarball = e2e_tmp / "ha-kill.tar"
    tarball.write_bytes(make_rootfs_tar({"opt/big.bin": layer}))
    ref = f"{cluster.host}/ha/killed:v1"
    dockerd.docker("import", str(tarball), ref)
    tarball.unlink()
    push = await asyncio.create_subprocess_exec(
        dockerd.client, "push", ref, env={**os.environ, **dockerd.env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    victim = await long_request(cluster, push, hold=0.5)
    cut_before = cut_requests(cluster, victim)
    cluster.kill(victim)
    out, _ = await asyncio.wait_for(push.communicate(), PATIENCE * 3)
    text = out.decode()
    assert push.returncode == 0, text
    # The layer's request was cut by the kill (so the push that succeeded is docker's retry).
    assert cut_requests(cluster, victim) > cut_before, cluster.balancer.servers()[victim]
    match = PUSH_DIGEST.search(text)
    assert match is not None, text
    digest = match.group(2)

    dockerd.docker("rmi", "--force", ref)
    dockerd.docker("pull", ref)
    cluster.restart(victim)
    for name, replica in cluster.replicas.items():
        resp = get_manifest(replica, "ha/killed", "v1")
        assert resp.status == 200 and resp.headers["docker-content-digest"] == digest, name
    manifest = json.loads(get_manifest(cluster, "ha/killed", "v1").body)
    layers = manifest["layers"]
    assert len(layers) == 1
    for name, replica in cluster.replicas.items():
        status, _, body = get(f"{replica.url}/v2/ha/killed/blobs/{layers[0]['digest']}")
        assert status == 200 and sha256(body) == layers[0]["digest"], name
    dockerd.docker("rmi", "--force", ref)
