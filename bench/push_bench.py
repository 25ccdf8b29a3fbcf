"""Manifest pushes, this tree against another one (e.g. the main branch), side by side.

```sh
git archive main | tar -x -C /tmp/trustyard-main       # the baseline's code, untouched
python -m bench.push_bench --baseline /tmp/trustyard-main
python -m bench.push_bench --baseline /tmp/trustyard-main --rounds 5 --puts 400 --images 60
```

Starts four servers on 127.0.0.1 (port 0, the bound port read from the log): this tree's and
the baseline's `python -m registry serve`, each without a policy and with the registry
benchmark's 100-rule policy (`registry_bench.policy_file`: the push path decides 100 rules,
among them `immutable_tags` on the benchmark's repositories, so the tag guard is taken). The
baseline runs from its own directory with `PYTHONDONTWRITEBYTECODE=1`: nothing is written there.

Each round runs, on every server (the order flips every round):

- manifest PUT by tag: `--puts` image manifests (one config and one layer, pushed once; each
  manifest differs by an annotation) PUT to fresh tags by `--clients` concurrent clients:
  PUT/s, p50, p99;
- image push: `--images` images, each a fresh config and two fresh 64 KiB layers (POST + PUT
  `?digest=`), then its manifest PUT by tag, `--clients` at once: images/s, p50, p99 of one
  image.

Cells are the median over `--rounds` (min-max in brackets); then this tree over the baseline:
the ratio of the medians, and the median of each round's ratio (the two ran back to back). For
rates >1 is faster; for CPU and latencies <1 is cheaper. Server CPU (user + system of the server
process, from /proc) per operation is the steadiest column on a shared machine: other
processes' load changes wall times far more than the work a request costs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.registry_bench import policy_file
from bench.workloads import make_session, tree_cpu_seconds

REPO_ROOT = Path(__file__).resolve().parent.parent
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
WHO = ("this", "baseline")
LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


@dataclass
class Server:
    """One running registry."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def start(name: str, source: Path, tmp: Path, policy: Path | None, timeout: float) -> Server:
    """`python -m registry serve` from `source` on a port the system picks."""
    data = tmp / name
    data.mkdir(parents=True)
    log = tmp / f"{name}.log"
    args = [sys.executable, "-m", "registry", "serve", "--listen", "127.0.0.1:0"]
    args += ["--data-dir", str(data / "data")]
    if policy is not None:
        args += ["--policy", str(policy)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(source)}
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=source, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = LISTENING.search(log.read_bytes())
        if found:
            return Server(name, f"http://127.0.0.1:{int(found.group(1))}", process, log)
        if process.poll() is not None:
            break
        time.sleep(0.05)  # polling for the log line, not a synchronisation
    process.kill()
    raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')[-2000:]}")


def stop(server: Server) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data)}


def manifest(config: bytes, layers: list[bytes], note: str) -> bytes:
    """An OCI image manifest, titled as the benchmark policy's pull rules like."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
            "annotations": {"org.opencontainers.image.title": "trustyard-bench", "n": note},
        }
    ).encode()


async def put_blob(session: aiohttp.ClientSession, url: str, name: str, data: bytes) -> None:
    async with session.post(
        f"{url}/v2/{name}/blobs/uploads/?digest={digest(data)}", data=data
    ) as resp:
        if resp.status != 201:
            raise RuntimeError(f"blob push to {url}: {resp.status} {await resp.text()}")


async def put_manifest(
    session: aiohttp.ClientSession, url: str, name: str, tag: str, body: bytes
) -> None:
    async with session.put(
        f"{url}/v2/{name}/manifests/{tag}", data=body, headers={"Content-Type": OCI_MANIFEST}
    ) as resp:
        if resp.status != 201:
            raise RuntimeError(f"manifest PUT to {url}: {resp.status} {await resp.text()}")


async def timed_pool(
    count: int, clients: int, one: Callable[[int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """Run `one(0..count-1)` on `clients` workers: (wall seconds, each call's seconds)."""
    latencies: list[float] = []
    queue = iter(range(count))

    async def worker() -> None:
        for number in queue:
            started = time.perf_counter()
            await one(number)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - started, latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def manifest_puts(
    session: aiohttp.ClientSession, server: Server, round_no: int, args: argparse.Namespace
) -> dict[str, float]:
    """PUT by tag of manifests over blobs pushed once."""
    name = "bench/manifest"
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode()
    layer = b"bench-layer" * 100
    await put_blob(session, server.url, name, config)
    await put_blob(session, server.url, name, layer)

    async def one(number: int) -> None:
        body = manifest(config, [layer], f"{round_no}-{number}")
        await put_manifest(session, server.url, name, f"r{round_no}-{number}", body)

    cpu = tree_cpu_seconds(server.process.pid)
    wall, latencies = await timed_pool(args.puts, args.clients, one)
    cpu = tree_cpu_seconds(server.process.pid) - cpu
    return {
        "put_cpu_ms": cpu / args.puts * 1000,
        "put_per_s": args.puts / wall,
        "put_p50_ms": pct(latencies, 0.5) * 1000,
        "put_p99_ms": pct(latencies, 0.99) * 1000,
    }


async def image_pushes(
    session: aiohttp.ClientSession, server: Server, round_no: int, args: argparse.Namespace
) -> dict[str, float]:
    """Fresh images: config and two layers uploaded, then the manifest PUT by tag."""
    name = "bench/image"

    async def one(number: int) -> None:
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "n": f"{round_no}-{number}"}
        ).encode()
        layers = [os.urandom(64 * 1024) for _ in range(2)]
        for blob in (config, *layers):
            await put_blob(session, server.url, name, blob)
        body = manifest(config, layers, f"{round_no}-{number}")
        await put_manifest(session, server.url, name, f"r{round_no}-{number}", body)

    cpu = tree_cpu_seconds(server.process.pid)
    wall, latencies = await timed_pool(args.images, args.clients, one)
    cpu = tree_cpu_seconds(server.process.pid) - cpu
    return {
        "image_cpu_ms": cpu / args.images * 1000,
        "image_per_s": args.images / wall,
        "image_p50_ms": pct(latencies, 0.5) * 1000,
        "image_p99_ms": pct(latencies, 0.99) * 1000,
    }


METRICS = [
    ("put_cpu_ms", "manifest PUT by tag, server CPU ms per PUT", False),
    ("put_per_s", "manifest PUT by tag, PUT/s", True),
    ("put_p50_ms", "manifest PUT by tag, p50 ms", False),
    ("put_p99_ms", "manifest PUT by tag, p99 ms", False),
    ("image_cpu_ms", "image push, server CPU ms per image", False),
    ("image_per_s", "image push, images/s", True),
    ("image_p50_ms", "image push, p50 ms", False),
    ("image_p99_ms", "image push, p99 ms", False),
]


async def run(servers: list[tuple[str, Server]], args: argparse.Namespace) -> dict:
    results: dict[str, dict[str, list[float]]] = {key: {} for key, _ in servers}
    by_key = dict(servers)
    async with make_session(connections=args.clients * 2) as session:
        # Untimed: the first requests of a fresh process pay for imports and first connections.
        warm = argparse.Namespace(**{**vars(args), "puts": 20, "images": 4})
        for _, server in servers:
            await manifest_puts(session, server, -1, warm)
            await image_pushes(session, server, -1, warm)
        for round_no in range(args.rounds):
            # This tree and the baseline back to back, per workload, the first one alternating:
            # a burst of load from elsewhere on the machine hits both of a pair alike.
            for work in (manifest_puts, image_pushes):
                for kind in ("no policy", "100-rule policy"):
                    pair = [(f"{who}, {kind}", by_key[f"{who}, {kind}"]) for who in WHO]
                    for key, server in pair if round_no % 2 == 0 else reversed(pair):
                        for metric, value in (await work(session, server, round_no, args)).items():
                            results[key].setdefault(metric, []).append(value)
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)
    return results


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def render(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"rounds {args.rounds}, {args.puts} manifest PUTs and {args.images} image pushes per "
        f"round and server, {args.clients} clients; median [min-max]",
        "",
    ]
    for policy in ("no policy", "100-rule policy"):
        this, base = results[f"this, {policy}"], results[f"baseline, {policy}"]
        lines += [
            f"### {policy}",
            "",
            "| metric | this tree | baseline | this / baseline | paired |",
            "| --- | --- | --- | --- | --- |",
        ]
        for metric, label, _higher in METRICS:
            ratio = statistics.median(this[metric]) / statistics.median(base[metric])
            # Each round's pair ran back to back: the median of their ratios.
            paired = statistics.median(
                t / b for t, b in zip(this[metric], base[metric], strict=True)
            )
            lines.append(
                f"| {label} | {cell(this[metric])} | {cell(base[metric])} | {ratio:.2f} "
                f"| {paired:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other tree's root")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--puts", type=int, default=300, help="manifest PUTs per round")
    parser.add_argument("--images", type=int, default=40, help="image pushes per round")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    parser.add_argument("--start-timeout", type=float, default=60.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="trustyard-push-bench-"))
    started: list[tuple[str, Server]] = []
    try:
        policy = policy_file(tmp / "policy.yaml", 100)
        for label, source in (("this", REPO_ROOT), ("baseline", args.baseline.resolve())):
            for kind, path in (("no policy", None), ("100-rule policy", policy)):
                key = f"{label}, {kind}"
                name = key.replace(", ", "-").replace(" ", "-")
                started.append((key, start(name, source, tmp, path, args.start_timeout)))
        results = asyncio.run(run(started, args))
        print(render(results, args))
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=1))
        return 0
    finally:
        for _, server in started:
            stop(server)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
