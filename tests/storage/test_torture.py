"""The torture test: nothing acknowledged is lost under concurrency, collection and `kill -9`.

Against the real server (restarted after every `kill -9`) and the real `trustyard gc` (in a loop
with a grace period of a fraction of a second, itself sometimes killed), at once:

* pushers upload images, chunked or monolithic, each with a layer shared across repositories
  (sometimes mounted from another repository), and tag them;
* taggers give acknowledged manifests more tags; referrer pushers attach artifacts to them;
* tag deleters and manifest deleters remove what they choose (their targets leave the ledger
  before the request goes out).

At the end, on a freshly started server: every tag acknowledged with 201 and not deleted by a
client resolves to its digest, and every blob a surviving manifest or referrer names reads back
with its digest. Run once per backend (filesystem, S3 on SeaweedFS). `--soak=SECONDS` makes the
storm longer than the CI default.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST
from tests.server_process import RegistryProcess, start_registry

#: Seconds of storm per backend in CI; it goes on (up to `CAP` times as long) until it has seen
#: at least `ENOUGH` of each kind of event, so a slow machine still gets a real storm.
CI_SECONDS = 10.0
CAP = 4
ENOUGH = {"acks": 15, "kills": 2, "collections": 2}

REPOSITORIES = ("alpha", "beta", "gamma")
SHARED_LAYERS = [f"shared layer {n} ".encode() * 512 for n in range(4)]
ARTIFACT = "application/vnd.trustyard.test.signature"


def sha256(data: bytes) -> str:
    """`sha256:<hex>` of data."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Down(Exception):
    """The server did not answer (it was killed, or is restarting)."""


@dataclass
class Ledger:
    """What clients were answered 201 for and have not deleted themselves."""

    tags: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    referrers: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    shared_in: dict[bytes, set[str]] = field(default_factory=dict)
    acks: int = 0
    kills: int = 0
    collections: int = 0

    def enough(self) -> bool:
        """Whether the storm saw enough acknowledgements, kills and collections."""
        return all(getattr(self, key) >= least for key, least in ENOUGH.items())


@dataclass
class Storm:
    """The running server, and what the workers share."""

    server: RegistryProcess
    session: aiohttp.ClientSession
    ledger: Ledger
    deadline: float
    cap: float
    rng: random.Random

    @property
    def running(self) -> bool:
        """Whether the storm goes on: until its time is up and it has seen enough."""
        now = time.monotonic()
        if now < self.deadline:
            return True
        if now > self.cap:
            return False
        return not self.ledger.enough()

    async def call(
        self, method: str, path: str, data: bytes | None = None, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        """One request; `Down` when the server is not answering."""
        url = path if path.startswith("http") else self.server.url + path
        try:
            async with self.session.request(method, url, data=data, headers=headers) as resp:
                return resp.status, dict(resp.headers), await resp.read()
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise Down(str(exc)) from exc


async def push_blob(storm: Storm, repo: str, data: bytes) -> bool:
    """Upload a blob (monolithic, chunked or mounted); whether it was answered 201."""
    rng = storm.rng
    digest = sha256(data)
    owners = storm.ledger.shared_in.get(data, set()) - {repo}
    if owners and rng.random() < 0.5:
        status, headers, _ = await storm.call(
            "POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={rng.choice(sorted(owners))}"
        )
        if status == 201:
            return True
        if status != 202:
            return False
        status, _, _ = await storm.call("PUT", f"{headers['Location']}?digest={digest}", data)
        return status == 201
    if rng.random() < 0.5:
        status, _, _ = await storm.call("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data)
        return status == 201
    status, headers, _ = await storm.call("POST", f"/v2/{repo}/blobs/uploads/")
    if status != 202:
        return False
    location, middle = headers["Location"], len(data) // 2
    status, headers, _ = await storm.call(
        "PATCH",
        location,
        data[:middle],
        **{"Content-Range": f"0-{middle - 1}", "Content-Type": "application/octet-stream"},
    )
    if status != 202:
        return False
    status, _, _ = await storm.call("PUT", f"{headers['Location']}?digest={digest}", data[middle:])
    return status == 201


async def push_manifest(
    storm: Storm, repo: str, blobs: list[bytes], reference: str | None, **extra: Any
) -> tuple[str, bytes] | None:
    """Upload blobs (first one the config), then the manifest; (digest, bytes) on 201."""
    for blob in blobs:
        if not await push_blob(storm, repo, blob):
            return None
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(blobs[0]), "size": len(blobs[0])},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": sha256(b), "size": len(b)} for b in blobs[1:]
        ],
        **extra,
    }
    body = json.dumps(manifest).encode()
    digest = sha256(body)
    status, _, _ = await storm.call(
        "PUT",
        f"/v2/{repo}/manifests/{reference or digest}",
        body,
        **{"Content-Type": OCI_MANIFEST},
    )
    return (digest, body) if status == 201 else None


async def pusher(storm: Storm, name: str) -> None:
    number = 0
    while storm.running:
        number += 1
        repo = storm.rng.choice(REPOSITORIES)
        shared = storm.rng.choice(SHARED_LAYERS)
        own = os.urandom(storm.rng.choice((300, 70_000, 600_000)))
        config = json.dumps({"pusher": name, "n": number}).encode()
        tag = f"{name}-{number}"
        try:
            pushed = await push_manifest(storm, repo, [config, shared, own], tag)
        except Down:
            await asyncio.sleep(0.05)
            continue
        if pushed is not None:
            storm.ledger.tags[(repo, tag)] = pushed
            storm.ledger.shared_in.setdefault(shared, set()).add(repo)
            storm.ledger.acks += 1


async def tagger(storm: Storm, name: str) -> None:
    number = 0
    while storm.running:
        await asyncio.sleep(0.01)
        if not storm.ledger.tags:
            continue
        number += 1
        (repo, _), (digest, body) = storm.rng.choice(list(storm.ledger.tags.items()))
        tag = f"{name}-{number}"
        try:
            status, _, _ = await storm.call(
                "PUT", f"/v2/{repo}/manifests/{tag}", body, **{"Content-Type": OCI_MANIFEST}
            )
        except Down:
            continue
        if status == 201:
            storm.ledger.tags[(repo, tag)] = (digest, body)
            storm.ledger.acks += 1


async def referrer_pusher(storm: Storm, name: str) -> None:
    number = 0
    while storm.running:
        await asyncio.sleep(0.02)
        if not storm.ledger.tags:
            continue
        number += 1
        (repo, _), (subject, body) = storm.rng.choice(list(storm.ledger.tags.items()))
        blobs = [json.dumps({"signer": name, "n": number}).encode(), os.urandom(200)]
        descriptor = {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(body)}
        try:
            pushed = await push_manifest(
                storm, repo, blobs, None, subject=descriptor, artifactType=ARTIFACT
            )
        except Down:
            continue
        if pushed is not None:
            storm.ledger.referrers[(repo, pushed[0])] = (subject, pushed[1])
            storm.ledger.acks += 1


async def tag_deleter(storm: Storm) -> None:
    while storm.running:
        await asyncio.sleep(0.25)
        if len(storm.ledger.tags) < 10:
            continue
        key = storm.rng.choice(list(storm.ledger.tags))
        del storm.ledger.tags[key]  # out of the ledger first: the delete may land or not
        with contextlib.suppress(Down):
            await storm.call("DELETE", f"/v2/{key[0]}/manifests/{key[1]}")


async def manifest_deleter(storm: Storm, name: str) -> None:
    """Pushes its own images and deletes them by digest (tags named only by it)."""
    number = 0
    while storm.running:
        await asyncio.sleep(0.05)
        number += 1
        repo = storm.rng.choice(REPOSITORIES)
        config = json.dumps({"doomed": name, "n": number}).encode()
        try:
            pushed = await push_manifest(
                storm, repo, [config, storm.rng.choice(SHARED_LAYERS)], f"{name}-{number}"
            )
            if pushed is not None:
                await storm.call("DELETE", f"/v2/{repo}/manifests/{pushed[0]}")
        except Down:
            continue


async def collector(storm: Storm, config: Path | None) -> None:
    """`trustyard gc` with a tiny grace period, over and over; sometimes killed half way."""
    extra = ["--config", str(config)] if config else []
    while storm.running:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "registry", "gc", "--data-dir", str(storm.server.data_dir),
            "--grace-period", "0.3s", *extra,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        kill_after = storm.rng.uniform(0.05, 1.5) if storm.rng.random() < 0.3 else None
        try:
            _, err = await asyncio.wait_for(process.communicate(), kill_after or 120)
            assert process.returncode in (0, 75), err.decode()[-3000:]
            storm.ledger.collections += 1
        except TimeoutError:
            process.kill()
            await process.wait()


async def killer(storm: Storm) -> None:
    """`kill -9` the server at random moments, then start it again on the same data."""
    while storm.running:
        await asyncio.sleep(storm.rng.uniform(0.8, 2.5))
        if not storm.running:
            return
        old = storm.server
        old.process.send_signal(signal.SIGKILL)
        old.process.wait()
        storm.ledger.kills += 1
        storm.server = await asyncio.to_thread(
            start_registry, old.data_dir, extra_args=old.extra_args
        )


async def verify(server: RegistryProcess, ledger: Ledger) -> int:
    """Every acknowledged tag and referrer resolves; every blob they name reads back intact.
    The number of blobs read."""
    checked: set[tuple[str, str]] = set()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def fetch(path: str) -> bytes:
            async with session.get(server.url + path) as resp:
                assert resp.status == 200, f"GET {path}: {resp.status} {await resp.text()}"
                return await resp.read()

        async def blobs_of(repo: str, body: bytes) -> None:
            manifest = json.loads(body)
            for blob in [manifest["config"], *manifest["layers"]]:
                if (repo, blob["digest"]) in checked:
                    continue
                data = await fetch(f"/v2/{repo}/blobs/{blob['digest']}")
                assert sha256(data) == blob["digest"], f"{repo} {blob['digest']} corrupt"
                checked.add((repo, blob["digest"]))

        for (repo, tag), (_digest, body) in sorted(ledger.tags.items()):
            assert await fetch(f"/v2/{repo}/manifests/{tag}") == body, f"{repo}:{tag}"
            await blobs_of(repo, body)
        living = {(repo, digest) for (repo, _), (digest, _) in ledger.tags.items()}
        for (repo, digest), (subject, body) in sorted(ledger.referrers.items()):
            if (repo, subject) not in living:
                continue  # a referrer goes with its subject
            assert await fetch(f"/v2/{repo}/manifests/{digest}") == body
            await blobs_of(repo, body)
    return len(checked)


@pytest.mark.parametrize("backend", ["filesystem", "s3"])
def test_nothing_acknowledged_is_lost(backend, tmp_path, request):
    seconds = request.config.getoption("--soak") or CI_SECONDS
    config: Path | None = None
    if backend == "s3":
        from tests.storage.conftest import s3_storage

        config = tmp_path / "config.yaml"
        config.write_text(json.dumps({"storage": s3_storage(request.getfixturevalue("seaweed"))}))
    extra = ["--config", str(config)] if config else []
    seed = int(os.environ.get("TORTURE_SEED", time.time()))
    print(f"torture seed {seed} ({backend}, {seconds}s)")
    ledger = Ledger()
    server = start_registry(tmp_path / "data", extra_args=extra)

    async def storm() -> Storm:
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            began = time.monotonic()
            state = Storm(
                server, session, ledger, began + seconds, began + CAP * seconds, random.Random(seed)
            )
            workers = [
                *(pusher(state, f"p{n}") for n in range(4)),
                *(tagger(state, f"t{n}") for n in range(2)),
                referrer_pusher(state, "r0"),
                tag_deleter(state),
                manifest_deleter(state, "d0"),
                collector(state, config),
                killer(state),
            ]
            await asyncio.gather(*workers)
            return state

    state = asyncio.run(storm())
    state.server.stop(signal.SIGKILL)
    final = start_registry(tmp_path / "data", extra_args=extra)
    try:
        blobs = asyncio.run(verify(final, ledger))
    finally:
        final.stop()
    print(
        f"torture {backend}: {ledger.acks} acknowledged pushes, {len(ledger.tags)} tags and "
        f"{len(ledger.referrers)} referrers checked, {blobs} blobs read back, "
        f"{ledger.kills} kill -9, {ledger.collections} collections"
    )
    # The storm really happened: pushes acknowledged, servers killed, collections run.
    assert ledger.enough(), ledger
    assert len(ledger.tags) >= 5
