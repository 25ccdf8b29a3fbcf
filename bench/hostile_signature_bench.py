"""Hostile signatures vs. everyone else's latency: what one pusher with push rights can cost.

    python -m bench.hostile_signature_bench [--seconds 10] [--probes 8] [--rate 1]
                                            [--attack reported,flood,control]

Starts Trustyard (`python -m registry serve`, 127.0.0.1, scratch data directory) with a policy
that verifies signatures, pushes one image, then measures `GET /v2/` latency of `--probes`
concurrent clients twice: alone (baseline), and while an attacker (a process of its own) pushes,
`--rate` rounds per second (default 1; 0: back to back), each round:

- the reported attack: a cosign `.sig` manifest with 3,000 simple-signing layers that all name
  one 1 MiB payload (a ~1 MB manifest), refused at push by the layer limit;
- (`--attack control`, for comparison) the same ~1 MB manifest pushed under a plain tag, where
  no signature is involved: what any large manifest push costs;
- the worst accepted case: signature referrers of the image, each at the per-manifest layer
  limit with distinct payloads near the payload size limit, each signed by a key nobody trusts,
  so every push verifies the image's signatures up to the per-image budget (on the
  verification pool, off the event loop), and a pull of the image after each push (the
  evidence changed: decided afresh).

Prints p50/p99/max of the probes for both phases, the attacker's pushes and refusals, and the
server's peak RSS (VmHWM). The target: p99 under attack below 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from policies.signatures import simple_signing
from policies.signatures.discovery import MAX_SIGNATURE_LAYERS, MAX_SIMPLE_SIGNING_PAYLOAD

REPO_ROOT = Path(__file__).resolve().parent.parent
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

POLICY = """\
version: 1
trust:
  keys:
    release: {pem_file: release.pub}
rules:
  - name: prod is signed by release
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      signature: {any_of: [release]}
"""


def sha256(data: bytes) -> str:
    """`sha256:<hex>` of data."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    """An OCI descriptor of `data`."""
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


async def push_blob(session: aiohttp.ClientSession, url: str, data: bytes) -> str:
    """A monolithic blob upload to prod/app."""
    digest = sha256(data)
    async with session.post(f"{url}/v2/prod/app/blobs/uploads/?digest={digest}", data=data) as r:
        if r.status != 201:
            raise SystemExit(f"blob push failed: {r.status} {await r.text()}")
    return digest


async def put_manifest(
    session: aiohttp.ClientSession, url: str, reference: str, body: bytes
) -> int:
    """PUT a manifest; the status."""
    async with session.put(
        f"{url}/v2/prod/app/manifests/{reference}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    ) as resp:
        await resp.read()
        return resp.status


def payload(image: str, size: int, salt: str) -> bytes:
    """A simple-signing payload for `image`, padded to about `size` bytes."""
    base = {
        "critical": {
            "identity": {"docker-reference": "localhost/prod/app"},
            "image": {"docker-manifest-digest": image},
            "type": simple_signing.SIGNATURE_TYPE,
        },
        "optional": {"salt": salt, "padding": ""},
    }
    text = json.dumps(base).encode()
    base["optional"]["padding"] = "x" * max(0, size - len(text) - 16)
    return json.dumps(base).encode()


def sig_manifest(
    config: bytes, layers: list[tuple[bytes, bytes]], subject: str | None, note: str
) -> bytes:
    """A cosign-layout signature manifest with one layer per (payload, signature)."""
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [
            descriptor(
                simple_signing.SIMPLE_SIGNING,
                data,
                annotations={simple_signing.SIGNATURE_ANNOTATION: base64.b64encode(sig).decode()},
            )
            for data, sig in layers
        ],
        "annotations": {"note": note},
    }
    if subject is not None:
        manifest["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1}
    return json.dumps(manifest, separators=(",", ":")).encode()


async def probe(url: str, seconds: float, samples: list[float]) -> None:
    """GET /v2/ in a loop for `seconds`, recording each latency (ms)."""
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            async with session.get(f"{url}/v2/") as resp:
                await resp.read()
            samples.append((time.perf_counter() - started) * 1000)


def summary(samples: list[float]) -> str:
    """`p50 / p99 / max (n)` in ms."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered):.2f} ms, p99 {p99:.2f} ms, max {ordered[-1]:.2f} ms "
        f"({len(ordered)} requests)"
    )


async def attack(
    url: str,
    image: str,
    seconds: float,
    ready: Any,
    go: Any,
    counts: dict[str, int],
    kinds: frozenset[str],
    rate: float,
) -> None:
    """Prepare the hostile manifests, say `ready`, wait for `go`, then push them in a loop for
    `seconds` (in a process of its own: its CPU work must not stall the probes' loop)."""
    stranger = ec.generate_private_key(ec.SECP256R1())
    config = b'{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]}}'
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await push_blob(session, url, config)
        big = payload(image, 1 << 20, "big")
        await push_blob(session, url, big)
        reported = sig_manifest(config, [(big, stranger.sign(big, _ecdsa()))] * 3000, None, "x")
        sig_tag = image.replace(":", "-") + ".sig"
        payloads = []
        for n in range(MAX_SIGNATURE_LAYERS):
            data = payload(image, MAX_SIMPLE_SIGNING_PAYLOAD - 64, f"p{n}")
            await push_blob(session, url, data)
            payloads.append((data, stranger.sign(data, _ecdsa())))
        floods = [sig_manifest(config, payloads, image, f"flood {n}") for n in range(400)]
        ready.set()
        await asyncio.to_thread(go.wait)
        deadline, n = time.monotonic() + seconds, 0
        started = time.monotonic()
        while time.monotonic() < deadline and n < len(floods):
            if rate > 0:  # paced: round n starts at n / rate seconds
                await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            if "reported" in kinds:
                status = await put_manifest(session, url, sig_tag, reported)
                counts["reported attack refused" if status == 400 else f"reported {status}"] += 1
            if "control" in kinds:  # the same bytes under a plain tag: no signature involved
                status = await put_manifest(session, url, "plain", reported)
                counts[f"control {status}"] += 1
            if "flood" in kinds:
                body = floods[n]
                status = await put_manifest(session, url, sha256(body), body)
                counts["flood referrers stored" if status == 201 else f"flood {status}"] += 1
                async with session.get(f"{url}/v2/prod/app/manifests/v1") as resp:
                    await resp.read()
                    counts[f"pull {resp.status}"] += 1
            n += 1


def attacker_process(
    url: str,
    image: str,
    seconds: float,
    ready: Any,
    go: Any,
    out: Any,
    kinds: frozenset[str],
    rate: float,
) -> None:
    """The attacker's process: run `attack` and send back its counts."""
    counts: dict[str, int] = _Counter()
    asyncio.run(attack(url, image, seconds, ready, go, counts, kinds, rate))
    out.put(dict(counts))


def _ecdsa() -> ec.ECDSA:
    return ec.ECDSA(hashes.SHA256())


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a process, in MB (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        return None
    return None


async def run(seconds: float, probes: int, kinds: frozenset[str], rate: float) -> None:
    """Start the registry, measure, print."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.server_process import start_registry

    scratch = Path(tempfile.mkdtemp(prefix="trustyard-hostile-"))
    release = ec.generate_private_key(ec.SECP256R1())
    (scratch / "release.pub").write_bytes(
        release.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (scratch / "policy.yaml").write_text(POLICY)
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    }
    server = start_registry(
        scratch / "data", extra_args=["--policy", str(scratch / "policy.yaml")], env=env
    )
    try:
        async with aiohttp.ClientSession() as session:
            config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
            layer = b"layer of prod/app"
            await push_blob(session, server.url, config)
            await push_blob(session, server.url, layer)
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": descriptor(OCI_CONFIG, config),
                    "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
                }
            ).encode()
            assert await put_manifest(session, server.url, "v1", manifest) == 201
        image = sha256(manifest)
        baseline: list[float] = []
        await asyncio.gather(*(probe(server.url, seconds, baseline) for _ in range(probes)))
        hostile: list[float] = []
        context = multiprocessing.get_context("spawn")
        ready, go, out = context.Event(), context.Event(), context.Queue()
        attacker = context.Process(
            target=attacker_process, args=(server.url, image, seconds, ready, go, out, kinds, rate)
        )
        attacker.start()
        await asyncio.to_thread(ready.wait, 300)
        go.set()
        await asyncio.gather(*(probe(server.url, seconds, hostile) for _ in range(probes)))
        counts = await asyncio.to_thread(out.get, True, 300)
        attacker.join(30)
        pace = f"{rate:g} rounds/s" if rate > 0 else "as fast as answered"
        attacks = ",".join(sorted(kinds))
        print(f"GET /v2/ x{probes} clients, {seconds:.0f} s each phase; attack {attacks}, {pace}")
        print(f"  baseline:      {summary(baseline)}")
        print(f"  under attack:  {summary(hostile)}")
        print(f"  attacker:      {dict(counts)}")
        rss = peak_rss_mb(server.process.pid)
        print(f"  server peak RSS: {rss:.1f} MB" if rss is not None else "  peak RSS: n/a")
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


class _Counter(dict[str, int]):
    def __missing__(self, key: str) -> int:
        return 0


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--probes", type=int, default=8, help="concurrent /v2/ clients")
    parser.add_argument(
        "--attack",
        default="reported,flood",
        help="comma-separated: reported (the 3,000-layer .sig), flood (referrers at the limits), "
        "control (the reported manifest's bytes under a plain tag, for comparison)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="attack rounds per second (0: as fast as the server answers)",
    )
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.probes, frozenset(args.attack.split(",")), args.rate))


if __name__ == "__main__":
    main()
