"""The pull-through proxy side by side: cold and warm pulls through Trustyard, straight from the
upstream, and through the reference registry's own proxy mode (`proxy: remoteurl:`).

    python -m bench.proxy_bench                    # 4 layers x 32 MiB, 3 rounds
    python -m bench.proxy_bench --layers 8 --layer-size 8MiB --rounds 5 --json
    git archive main | tar -x -C /tmp/trustyard-main       # another tree's code, untouched
    python -m bench.proxy_bench --baseline /tmp/trustyard-main
    python -m bench.proxy_bench --upstream-rate 1gbit     # the upstream behind a 1 Gbit/s link

Set-up: the upstream is Debian's `docker-registry` (CNCF Distribution 2.8, plain HTTP on
127.0.0.1); an image of `--layers` random layers is pushed to it. A pull is what docker does:
GET the manifest by tag, then the config and every layer, three blobs at a time, bodies read and
discarded (lengths checked).

Rows, each the median (min-max) over `--rounds`:

* upstream direct: the pull straight from the upstream;
* Trustyard cold: through a fresh Trustyard (new data directory, nothing cached);
* Trustyard warm: the same pull again, from Trustyard's cache;
* baseline cold / warm (with `--baseline DIR`): the same through the Trustyard of another tree
  (run from DIR with `PYTHONDONTWRITEBYTECODE=1`), in the same rounds, its turn alternating with
  this tree's;
* Distribution proxy cold / warm: the same through `docker-registry` in proxy mode (fresh
  storage each round);
* single flight: `--clients` clients pulling the image at once through a fresh Trustyard; the
  upstream's own log counts the blob GETs it served (one per blob expected).

The server CPU seconds of each Trustyard cold pull (from /proc) and the load average before and
after are printed too: on a shared machine the wall-clock ratios swing with the load.

The CPU budget says whether "within 10% of the direct pull" can be met on this machine at all:
the CPU seconds the client (this process), the upstream and Trustyard (its event-loop thread and
the others) spend during a direct and a cold pull (medians, from /proc), SHA-256 of the same
bytes alone (`hashlib`, which a proxy that verifies what it caches cannot skip), and from them
the least wall-clock time each pull could take with every core busy (its CPU seconds / cores).
When that floor for a cold pull is above 1.1x the measured direct pull, no proxy doing the same
work can meet the target on this machine: the upstream and the client run here too. The floors
are compared with each other as well (a quiet machine runs the direct pull near its floor), with
the floor of a proxy that did nothing but hash the bytes.

`--upstream-rate RATE` (and `--upstream-delay DELAY`, where the kernel has netem) puts the
upstream behind a link shaped like a real one with Linux `tc` on `lo`, on the upstream's port
only (`bench/shaped_link.py`; root; removed at the end): every row then pulls through it, the
direct pull as much as Trustyard's fetches, as a remote upstream would be reached.

Every server listens on 127.0.0.1 and keeps its data in a scratch directory removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.shaped_link import shaped_port, tc_binary
from policies.rules import parse_size
from tests.proxy.upstreams import Upstream, random_layer, reference_registry
from tests.server_process import RegistryProcess, start_registry

IMAGE = "bench/proxied"
ACCEPT = "application/vnd.oci.image.manifest.v1+json"


async def pull(base: str, name: str, parallel: int = 3) -> int:
    """Pull `name:v1` from `base` as docker does; the bytes read."""
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{base}/v2/{name}/manifests/v1", headers={"Accept": ACCEPT}
        ) as resp:
            assert resp.status == 200, await resp.text()
            manifest = json.loads(await resp.read())
        blobs = [manifest["config"], *manifest["layers"]]
        gate = asyncio.Semaphore(parallel)

        async def one(blob: dict[str, Any]) -> int:
            async with gate, session.get(f"{base}/v2/{name}/blobs/{blob['digest']}") as got:
                assert got.status == 200, await got.text()
                size = 0
                async for chunk in got.content.iter_chunked(1 << 20):
                    size += len(chunk)
                assert size == blob["size"], (size, blob)
                return size

        return sum(await asyncio.gather(*(one(b) for b in blobs)))


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    asyncio.run(action())
    return time.perf_counter() - started


def trustyard(
    scratch: Path, upstream_url: str, tag: str, source: Path | None = None
) -> RegistryProcess:
    """A fresh Trustyard proxying `upstream_url` (this tree's code, or `source`'s)."""
    folder = scratch / f"trustyard-{tag}"
    folder.mkdir()
    config = {"upstreams": [{"name": "up", "url": upstream_url, "prefix": "up.test"}]}
    (folder / "trustyard.yaml").write_text(json.dumps(config))
    return start_registry(
        folder / "data",
        extra_args=["--config", str(folder / "trustyard.yaml")],
        env={"PYTHONDONTWRITEBYTECODE": "1"} if source is not None else None,
        cwd=source,
    )


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds a process (its threads, ended ones included) or one of its
    threads used so far."""
    stat = f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat"
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent during one pull by the client (this process), the upstream and, for a
    pull through a proxy, the proxy (its main thread, which runs the event loop, apart)."""

    def __init__(self, upstream_pid: int, proxy_pid: int | None = None) -> None:
        self.pids = {"upstream": upstream_pid}
        if proxy_pid is not None:
            self.pids["Trustyard"] = proxy_pid
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        now = {"client": time.process_time()}
        for role, pid in self.pids.items():
            now[role] = cpu_seconds(pid)
        if "Trustyard" in self.pids:
            pid = self.pids["Trustyard"]
            now["Trustyard event loop"] = cpu_seconds(pid, pid)
        return now

    def spent(self) -> dict[str, float]:
        """CPU seconds each part used since the meter was made."""
        end = self._read()
        return {role: end[role] - self.start[role] for role in end}


def sha256_cpu(layers: list[bytes]) -> float:
    """CPU seconds `hashlib` takes to hash `layers` once (the best of three)."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for layer in layers:
            hashlib.sha256(layer).digest()
        best = min(best, time.process_time() - started)
    return best


def load() -> str:
    """The 1-minute load average."""
    return Path("/proc/loadavg").read_text().split()[0]


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-size", default="32MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--baseline", type=Path, help="another tree's root, measured alongside")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument(
        "--upstream-rate", help="shape the upstream's port on lo to this rate (tc, e.g. 1gbit)"
    )
    parser.add_argument(
        "--upstream-delay", help="and delay its packets this long each way (tc netem, e.g. 1ms)"
    )
    args = parser.parse_args()
    if args.upstream_rate or args.upstream_delay:
        tc_binary()  # refused before anything starts, with the reason
        # A SIGTERM unwinds like Ctrl-C, so the finally below removes the shaping from lo.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    scratch = Path(tempfile.mkdtemp(prefix="ty-proxy-bench-"))
    servers: list[Any] = []
    results: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    budget: dict[str, dict[str, list[float]]] = {}
    link = "upstream on loopback, unshaped"
    loads = [load()]
    failures: list[str] = []
    trees: list[tuple[str, Path | None]] = [("Trustyard", None)]
    if args.baseline is not None:
        trees.append(("baseline", args.baseline.resolve()))
    shaping = contextlib.ExitStack()
    try:
        upstream = reference_registry(scratch / "upstream", tls=False, auth=False)
        servers.append(upstream)
        layers = [random_layer(parse_size(args.layer_size)) for _ in range(args.layers)]
        asyncio.run(Upstream(upstream.url, None, None).push_image(IMAGE, "v1", layers))
        total = sum(len(x) for x in layers)
        hashing = sha256_cpu(layers)
        if args.upstream_rate or args.upstream_delay:
            link = shaping.enter_context(
                shaped_port(upstream.port, rate=args.upstream_rate, delay=args.upstream_delay)
            )
        print(f"image: {args.layers} layers, {total / 2**20:.0f} MiB; rounds: {args.rounds}")
        print(link)

        def measured(row: str, meter: CpuMeter) -> None:
            for role, seconds in meter.spent().items():
                budget.setdefault(row, {}).setdefault(role, []).append(seconds)

        for round_number in range(args.rounds):
            meter = CpuMeter(upstream.process.pid)
            results.setdefault("upstream direct", []).append(
                timed(lambda: pull(upstream.url, IMAGE))
            )
            measured("upstream direct", meter)
            order = trees if round_number % 2 == 0 else trees[::-1]
            for label, source in order:
                ty = trustyard(scratch, upstream.url, f"{label}-r{round_number}", source)
                servers.append(ty)
                meter = CpuMeter(upstream.process.pid, ty.process.pid)
                results.setdefault(f"{label} cold", []).append(
                    timed(lambda ty=ty: pull(ty.url, f"up.test/{IMAGE}"))
                )
                measured(f"{label} cold", meter)
                cpu.setdefault(f"{label} cold", []).append(budget[f"{label} cold"]["Trustyard"][-1])
                results.setdefault(f"{label} warm", []).append(
                    timed(lambda ty=ty: pull(ty.url, f"up.test/{IMAGE}"))
                )
                ty.stop()
            mirror = reference_registry(
                scratch / f"distribution-proxy-{round_number}",
                tls=False,
                auth=False,
                extra_config={"proxy": {"remoteurl": upstream.url}},
            )
            servers.append(mirror)
            for row in ("Distribution proxy cold", "Distribution proxy warm"):
                try:
                    results.setdefault(row, []).append(timed(lambda m=mirror: pull(m.url, IMAGE)))
                except AssertionError as exc:  # it answers 500 now and then under load
                    failures.append(f"{row}, round {round_number + 1}: {exc}"[:200])
            mirror.stop()
        # Single flight: many clients, one fresh Trustyard, blob GETs counted upstream.
        before = _blob_gets(upstream)
        ty = trustyard(scratch, upstream.url, "flight")
        servers.append(ty)

        async def crowd() -> None:
            await asyncio.gather(*(pull(ty.url, f"up.test/{IMAGE}") for _ in range(args.clients)))

        flight = timed(crowd)
        fetched = _blob_gets(upstream) - before
        ty.stop()
        loads.append(load())
    finally:
        shaping.close()  # the link first: nothing else of this machine is shaped a moment longer
        for server in servers:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    width = max(len(k) for k in results)
    for name, values in results.items():
        mib_s = total / 2**20 / statistics.median(values)
        print(f"{name:<{width}}  {summary(values)}  {mib_s:8.1f} MiB/s")
    direct = statistics.median(results["upstream direct"])
    cold = statistics.median(results["Trustyard cold"])
    warm = statistics.median(results["Trustyard warm"])
    reference_warm = statistics.median(results.get("Distribution proxy warm") or [float("nan")])
    for label, values in cpu.items():
        print(f"server CPU per {label} pull: {summary(values)}")
    print(f"load average (1 min) at the start and the end: {loads[0]}, {loads[-1]} (2 cores here)")
    print(f"Trustyard cold / upstream direct: {cold / direct:.2f}")
    if "baseline cold" in results:
        base = statistics.median(results["baseline cold"])
        print(f"baseline cold / upstream direct: {base / direct:.2f}")
    # Each round's own ratio: the load swings less within a round than across the run.
    for label, _ in trees:
        pairs = zip(results[f"{label} cold"], results["upstream direct"], strict=True)
        ratios = [cold_time / direct_time for cold_time, direct_time in pairs]
        print(
            f"{label} cold / upstream direct, per round: median {statistics.median(ratios):.2f} "
            f"({', '.join(f'{r:.2f}' for r in ratios)})"
        )
    print(f"Trustyard warm / Distribution proxy warm: {warm / reference_warm:.2f} (time)")
    print_budget(budget, direct, hashing, total, link)
    for failure in failures:
        print(f"not counted: {failure}")
    print(
        f"single flight: {args.clients} clients in {flight:.3f} s; upstream served "
        f"{fetched} blob GETs for {args.layers + 1} blobs"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "rows": results,
                    "server_cpu": cpu,
                    "cpu_budget": budget,
                    "sha256_cpu": hashing,
                    "link": link,
                    "load": loads,
                    "bytes": total,
                    "single_flight": {
                        "clients": args.clients,
                        "seconds": flight,
                        "upstream_blob_gets": fetched,
                        "blobs": args.layers + 1,
                    },
                }
            )
        )


def print_budget(
    budget: dict[str, dict[str, list[float]]],
    direct: float,
    hashing: float,
    total: int,
    link: str,
) -> None:
    """Print each pull's CPU seconds by part and the wall-clock floor they set on this machine."""
    cores = os.cpu_count() or 1
    target = 1.1 * direct
    print(f"CPU budget per pull (median CPU seconds, {cores} cores; {link}):")
    for row, parts in budget.items():
        spent = {role: statistics.median(values) for role, values in parts.items()}
        loop = spent.pop("Trustyard event loop", None)
        whole = sum(spent.values())
        shown = ", ".join(f"{role} {seconds:.3f}" for role, seconds in spent.items())
        if loop is not None:
            shown += f" (event loop {loop:.3f}, other threads {spent['Trustyard'] - loop:.3f})"
        print(f"  {row}: {shown}; all {whole:.3f} -> at least {whole / cores:.3f} s on {cores}")
    print(
        f"  SHA-256 of the same {total / 2**20:.0f} MiB alone (hashlib, one core): {hashing:.3f} s "
        f"of CPU ({total / 2**20 / hashing:.0f} MiB/s)"
    )
    cold = budget.get("Trustyard cold")
    if cold is None:
        return
    medians = {role: statistics.median(values) for role, values in cold.items()}
    floor = sum(seconds for role, seconds in medians.items() if role != "Trustyard event loop")
    direct_floor = sum(statistics.median(v) for v in budget["upstream direct"].values()) / cores
    # The least any verifying proxy adds: the client and the upstream as in the cold pull, and
    # the hash of every byte (no receive, no write, no send, no Python).
    hash_only = (medians["client"] + medians["upstream"] + hashing) / cores
    verdict = "possible" if floor / cores <= target else "not possible"
    print(
        f"  within 10% of the direct pull = {target:.3f} s; the cold pull's CPU alone needs "
        f"{floor / cores:.3f} s on {cores} cores: {verdict} at this run's load"
    )
    print(
        f"  floors without load: direct {direct_floor:.3f} s, cold {floor / cores:.3f} s "
        f"({floor / cores / direct_floor:.2f}x), a proxy doing nothing but SHA-256 "
        f"{hash_only:.3f} s ({hash_only / direct_floor:.2f}x): within 10% needs <= 1.10x"
    )


def _blob_gets(registry: Any) -> int:
    return sum(
        n for (m, p), n in registry.requests().items() if m == "GET" and "/blobs/sha256:" in p
    )


if __name__ == "__main__":
    main()
