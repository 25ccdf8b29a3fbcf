"""Manifest GETs while garbage collection deletes 10,000 manifests, side by side with GC off.

    python -m bench.gc_bench                      # 10,000 manifests, 16 clients
    python -m bench.gc_bench --manifests 2000 --clients 8

Set-up records N untagged manifests (and 100 tagged ones the clients read) through the storage
API, then starts the real server (`python -m registry serve`, 127.0.0.1, a scratch data dir).
Two runs with the same load, `--clients` connections GETting random tagged manifests:

* "GC off": for as long as the collection took in the other run (at least 5 s);
* "GC on": while `trustyard gc --grace-period 0s` (a separate process, as operators run it)
  deletes the N manifests; a writer also pushes a tag every 50 ms, to show how long a server
  write waits for SQLite's lock.

Prints p50/p99/max latency, requests, 5xx and the GC's duration, and the same as JSON with
`--json`. The server and scratch directory are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from storage.layout import DataLayout
from storage.metadata import ManifestRecord, open_metadata
from storage.oci.manifest import Reference
from tests.server_process import RegistryProcess, start_registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TAGGED = 100


def _manifest(number: int, kind: str) -> tuple[str, bytes]:
    config = "sha256:" + "c" * 64
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/json", "digest": config, "size": 2},
            "layers": [],
            "annotations": {kind: str(number)},
        }
    ).encode()
    return "sha256:" + hashlib.sha256(body).hexdigest(), body


async def fill(data_dir: Path, untagged: int, *, tagged: bool) -> None:
    """Record `untagged` untagged manifests (and the tagged ones once) in repository `bench`."""
    db = await open_metadata(DataLayout(data_dir).database)
    try:
        await db.link_blob("bench", "sha256:" + "c" * 64, 2)
        references = [Reference("sha256:" + "c" * 64, "blob")]
        if tagged:
            for number in range(TAGGED):
                digest, body = _manifest(number, "tagged")
                record = ManifestRecord("bench", digest, OCI_MANIFEST, body)
                await db.put_manifest(record, references, f"t{number}")
        stamp = time.time()
        for number in range(untagged):
            digest, body = _manifest(number, f"untagged-{stamp}")
            await db.put_manifest(
                ManifestRecord("bench", digest, OCI_MANIFEST, body), references, None
            )
    finally:
        await db.close()


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


async def load(server: RegistryProcess, clients: int, until: Any, *, write: bool) -> dict[str, Any]:
    """GET random tagged manifests on `clients` connections until `until()` is true."""
    latencies: list[float] = []
    writes: list[float] = []
    errors = {"5xx": 0, "other": 0}
    rng = random.Random(7)
    connector = aiohttp.TCPConnector(limit=clients + 1)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def reader() -> None:
            while not until():
                began = time.perf_counter()
                url = f"{server.url}/v2/bench/manifests/t{rng.randrange(TAGGED)}"
                async with session.get(url, headers={"Accept": OCI_MANIFEST}) as resp:
                    await resp.read()
                    status = resp.status
                latencies.append(time.perf_counter() - began)
                if status >= 500:
                    errors["5xx"] += 1
                elif status != 200:
                    errors["other"] += 1

        async def writer() -> None:
            _, body = _manifest(0, "tagged")
            number = 0
            while not until():
                number += 1
                began = time.perf_counter()
                async with session.put(
                    f"{server.url}/v2/bench/manifests/w{number}",
                    data=body,
                    headers={"Content-Type": OCI_MANIFEST},
                ) as resp:
                    await resp.read()
                    if resp.status >= 500:
                        errors["5xx"] += 1
                writes.append(time.perf_counter() - began)
                await asyncio.sleep(0.05)

        tasks = [reader() for _ in range(clients)]
        if write:
            tasks.append(writer())
        await asyncio.gather(*tasks)
    result: dict[str, Any] = {
        "requests": len(latencies),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies, default=0.0) * 1000, 2),
        **errors,
    }
    if writes:
        result["write_p99_ms"] = round(_percentile(writes, 0.99) * 1000, 2)
        result["write_max_ms"] = round(max(writes) * 1000, 2)
        result["writes"] = len(writes)
    return result


async def bench(manifests: int, clients: int, scratch: Path) -> dict[str, Any]:
    """Both runs; their measurements."""
    data_dir = scratch / "data"
    await fill(data_dir, manifests, tagged=True)
    server = start_registry(data_dir)
    try:
        # Warm up connections and caches.
        deadline = time.monotonic() + 2
        await load(server, clients, lambda: time.monotonic() > deadline, write=False)

        gc_log = scratch / "gc.log"
        began = time.monotonic()
        with gc_log.open("wb") as log:
            gc = subprocess.Popen(
                [sys.executable, "-m", "registry", "gc", "--data-dir", str(data_dir),
                 "--grace-period", "0s", "--json"],
                stdout=subprocess.PIPE, stderr=log,
            )  # fmt: skip
            gc_out = asyncio.get_running_loop().run_in_executor(None, gc.communicate)
            on = await load(server, clients, lambda: gc.poll() is not None, write=True)
            out, _ = await gc_out
        on["gc_seconds"] = round(time.monotonic() - began, 2)
        on["deleted"] = len(json.loads(out)["manifests"])

        length = max(5.0, on["gc_seconds"])
        deadline = time.monotonic() + length
        off = await load(server, clients, lambda: time.monotonic() > deadline, write=True)
        off["seconds"] = round(length, 2)
    finally:
        server.stop()
    return {"manifests": manifests, "clients": clients, "gc_off": off, "gc_on": on}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table (or JSON)."""
    parser = argparse.ArgumentParser(prog="python -m bench.gc_bench", description=__doc__)
    parser.add_argument("--manifests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="trustyard-gc-bench-"))
    try:
        result = asyncio.run(bench(args.manifests, args.clients, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    on, off = result["gc_on"], result["gc_off"]
    print(f"manifest GETs, {args.clients} clients; GC deleting {on['deleted']} manifests")
    print(f"{'':10} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'5xx':>5} "
          f"{'write p99':>10} {'write max':>10}")  # fmt: skip
    for name, row in (("GC off", off), ("GC on", on)):
        print(
            f"{name:10} {row['requests']:>9} {row['p50_ms']:>8} {row['p99_ms']:>8} "
            f"{row['max_ms']:>8} {row['5xx']:>5} {row.get('write_p99_ms', '-'):>10} "
            f"{row.get('write_max_ms', '-'):>10}"
        )
    print(f"GC took {on['gc_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
