"""Scaling out, side by side in one run, with auth and a signature policy on.

    python3 bench/scale_bench.py                         # every workload (~7 min)
    python -m bench.scale_bench                          # the same
    python -m bench.scale_bench --workloads get --duration 10
    python -m bench.scale_bench --workloads put,blob --puts 3000

Servers, all on 127.0.0.1, all but the reference with `auth` on (a users file with an admin
and a pull robot, 20 permission rules) and the registry benchmark's policy file (its signature
rule trusts a fresh key that signed the seeded image, its vulnerability rule a clean scan):

| server | what it is |
| --- | --- |
| 1 process | `trustyard serve`, SQLite |
| --workers 2 | `trustyard serve --workers 2`, SQLite |
| 2 replicas + HAProxy | two `trustyard serve` on one durable PostgreSQL, behind HAProxy |
| PostgreSQL, 1 process | the first replica alone, for the PostgreSQL vs SQLite rows |
| reference | CNCF Distribution (`docker-registry`), filesystem, no auth |

Workloads (`--workloads`, comma list):

- `get`: manifest GET by tag with `wrk` (`--connections`, `--duration`), the robot's bearer
  token on every request (as docker sends it); req/s, p50, p99, each server alone in turn.
  `--connections 16,64` (the default) measures each count in turn (rows per count): wrk keeps every
  connection busy, so past the count that saturates the servers more connections add only
  waiting (latency = connections / rate), and p99 means something only beside its count;
- `put`: `--puts` manifest PUTs by fresh tag into `--put-repos` repositories (blobs present),
  `--put-clients` concurrent clients, the admin's bearer token; PUT/s, p50, p99; on SQLite
  (1 process, `--workers 2`), PostgreSQL (1 process, 2 replicas) and the reference;
- `blob`: a `--blob-size` monolithic blob push and its pull, and `--small-count` 4 KiB blob
  pushes from 16 clients: SQLite (1 process) against PostgreSQL (1 process), and the reference.

PostgreSQL runs durable, as in production: `fsync`, `synchronous_commit` and
`full_page_writes` on (a push is answered 201 only once its commit is on disk).

Each row is the median over `--rounds`. The load tools run on the same 2-core machine as the
servers: what they use is not the servers'. Scratch data is removed at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python3 bench/scale_bench.py`: the packages are one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.auth_bench import ADMIN, REPOSITORY, SERVICE, basic, robot_pull_token, write_users
from bench.auth_bench import write_config as auth_config
from bench.evidence import Evidence
from bench.push_bench import manifest, put_manifest, timed_pool
from bench.registry_bench import policy_file, start_reference
from bench.workloads import (
    BenchError,
    make_blob_file,
    make_small_blobs,
    make_tempdir,
    pull_blob,
    push_blob_monolithic,
    push_small_blob,
    push_small_blobs,
    run_wrk,
    seed_image,
    tree_cpu_seconds,
    wrk_available,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD = "bench-admin-password"
WORKLOADS = ("get", "put", "blob")


@dataclass
class Target:
    """One registry under test (one URL; several processes behind it for some)."""

    name: str
    url: str
    pids: list[int]
    stops: list[Any] = field(default_factory=list)
    pull_headers: dict[str, str] = field(default_factory=dict)
    push_headers: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        for stop in reversed(self.stops):
            try:
                stop()
            except Exception as exc:
                print(f"{self.name}: stop failed: {exc}", file=sys.stderr)


def env() -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    }


def write_trustyard_files(root: Path, evidence: Evidence, metadata: str | None) -> list[str]:
    """The config (auth, scanner, metadata) and policy files; the `serve` arguments."""
    root.mkdir(parents=True, exist_ok=True)
    config = auth_config(root, "auth+policy", evidence)
    document = json.loads(config.read_text())
    if metadata is not None:
        document["metadata"] = metadata
    config.write_text(json.dumps(document))
    policy = policy_file(root / "policy.yaml", 100, evidence.public_pem())
    return ["--config", str(config), "--policy", str(policy)]


def start_trustyard(root: Path, extra: list[str], timeout: float, data_dir: Path | None = None):
    from tests.server_process import start_registry

    return start_registry(data_dir or root / "data", extra_args=extra, env=env(), timeout=timeout)


async def tokens(url: str, robot_token: str, put_repos: int) -> tuple[dict, dict]:
    """The robot's pull token and the admin's push token for the PUT repositories."""
    pull = {"Authorization": "Bearer " + await robot_pull_token(url, robot_token)}
    params = [("service", SERVICE)] + [
        ("scope", f"repository:bench/m{r}:push,pull") for r in range(put_repos)
    ]
    params.append(("scope", "repository:bench/blobs:push,pull"))
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/token", params=params, headers={"Authorization": basic(ADMIN, ADMIN_PASSWORD)}
        ) as resp,
    ):
        if resp.status != 200:
            raise BenchError(f"/token for the admin answered {resp.status}")
        push = {"Authorization": "Bearer " + (await resp.json())["token"]}
    return pull, push


async def seed(url: str, evidence: Evidence) -> None:
    async with aiohttp.ClientSession(
        headers={"Authorization": basic(ADMIN, ADMIN_PASSWORD)}
    ) as session:
        await seed_image(
            session,
            url,
            REPOSITORY,
            evidence=lambda d: evidence.add(session, url, REPOSITORY, d),
        )


def start_haproxy(root: Path, backends: list[str], timeout: float) -> tuple[str, Any, int]:
    """HAProxy on a free port, round robin over `backends` (host:port); its URL."""
    from tests.server_process import free_port

    port = free_port()
    servers = "\n".join(f"    server r{i} {b}" for i, b in enumerate(backends))
    config = root / "haproxy.cfg"
    config.write_text(
        f"""global
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend registry
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
{servers}
"""
    )
    process = subprocess.Popen(
        ["haproxy", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"haproxy exited with {process.returncode}")
        try:
            import urllib.request

            with urllib.request.urlopen(f"{url}/v2/", timeout=1):
                break
        except urllib.error.HTTPError as err:
            if err.code == 401:
                break
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)  # polling until it answers, not a synchronisation

    def stop() -> None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)

    return url, stop, process.pid


async def start_all(tmp: Path, args: argparse.Namespace, evidence: Evidence) -> list[Target]:
    from tests.postgres_server import PostgresServer

    targets: list[Target] = []
    try:
        for name, extra in (("1 process", []), ("--workers 2", ["--workers", "2"])):
            root = tmp / name.strip("-").replace(" ", "-")
            serve_args = write_trustyard_files(root, evidence, None) + extra
            robot = write_users(root / "data")
            proc = start_trustyard(root, serve_args, args.start_timeout)
            target = Target(name, proc.url, [proc.process.pid], [proc.stop])
            targets.append(target)
            await seed(proc.url, evidence)
            target.pull_headers, target.push_headers = await tokens(proc.url, robot, args.put_repos)

        # Its own folder: the cluster may run as another user (`postgres` when run as root).
        pg_root = Path(tempfile.mkdtemp(prefix="trustyard-bench-pg-"))
        pg = PostgresServer(pg_root)
        pg.start()
        # Durable, as a production cluster is (the tests' helper starts one without fsync),
        # with PostgreSQL's own default buffer cache (the helper's is a quarter of it), and its
        # checkpoints logged: a round that ran through one is then visible in its log.
        pg._options = (
            pg._options.replace("fsync=off", "fsync=on")
            .replace("synchronous_commit=off", "synchronous_commit=on")
            .replace("full_page_writes=off", "full_page_writes=on")
            .replace("shared_buffers=32MB", "shared_buffers=128MB")
            + " -c log_checkpoints=on"
        )
        pg.stop()
        pg.restart()
        url = pg.create_database()
        root = tmp / "replicas"
        serve_args = write_trustyard_files(root, evidence, url)
        robot = write_users(root / "data")
        replicas = [start_trustyard(root, serve_args, args.start_timeout) for _ in range(2)]
        single = Target(
            "PostgreSQL, 1 process",
            replicas[0].url,
            [replicas[0].process.pid],
            [lambda: shutil.rmtree(pg_root, ignore_errors=True), pg.stop],
        )
        single.stops += [r.stop for r in replicas]
        targets.append(single)
        balancer, stop_balancer, balancer_pid = start_haproxy(
            root, [f"127.0.0.1:{r.port}" for r in replicas], args.start_timeout
        )
        both = Target(
            "2 replicas + HAProxy",
            balancer,
            [balancer_pid, *(r.process.pid for r in replicas)],
            [stop_balancer],
        )
        targets.append(both)
        await seed(balancer, evidence)
        pulls, pushes = await tokens(balancer, robot, args.put_repos)
        for target in (single, both):
            target.pull_headers, target.push_headers = pulls, pushes

        reference = start_reference(tmp, "/usr/bin/docker-registry", "error", args.start_timeout)
        ref = Target("reference", reference.url, [reference.pid], [reference.stop])
        targets.append(ref)
        async with aiohttp.ClientSession() as session:
            await seed_image(session, reference.url, REPOSITORY)
    except BaseException:
        for target in targets:
            target.stop()
        raise
    return targets


async def get_by_tag(target: Target, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, float] = {}
    for connections in args.connections:
        cpu = sum(tree_cpu_seconds(pid) for pid in target.pids)
        result = await run_wrk(
            args.wrk,
            f"{target.url}/v2/{REPOSITORY}/manifests/bench",
            "GET",
            connections,
            args.duration,
            workdir,
            headers=target.pull_headers,
        )
        if result.requests == 0 or result.error_count > 0:
            raise BenchError(f"{target.name}: {result.errors} of {result.requests} requests failed")
        cores = (sum(tree_cpu_seconds(pid) for pid in target.pids) - cpu) / result.duration_s
        suffix = _at(connections, args)
        results |= {
            "get_rps" + suffix: result.rps,
            "get_p50" + suffix: result.p50_ms,
            "get_p99" + suffix: result.p99_ms,
            # CPU seconds per second of the server's processes: below 1 per process means the
            # machine did not give it a whole core (other load), not that it was waiting.
            "get_cores" + suffix: cores,
        }
    return results


def _at(connections: int, args: argparse.Namespace) -> str:
    """The key suffix of a GET row: none with one connection count, else `@N`."""
    return "" if len(args.connections) == 1 else f"@{connections}"


async def manifest_puts(target: Target, args: argparse.Namespace, round_no: int) -> dict:
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {}}).encode()
    layer = b"bench-layer" * 100
    connector = aiohttp.TCPConnector(limit=args.put_clients * 2)
    async with aiohttp.ClientSession(connector=connector, headers=target.push_headers) as s:
        if round_no == 0:
            for r in range(args.put_repos):
                await push_small_blob(s, target.url, f"bench/m{r}", config)
                await push_small_blob(s, target.url, f"bench/m{r}", layer)

        # Fresh for this target: the two PostgreSQL targets share one database, and the second
        # one must push new tags and manifests, not what the first one just pushed again.
        fresh = f"r{round_no}-{re.sub(r'[^a-z0-9]+', '-', target.name.lower()).strip('-')}"

        async def one(n: int) -> None:
            body = manifest(config, [layer], f"{fresh}-{n}")
            await put_manifest(s, target.url, f"bench/m{n % args.put_repos}", f"{fresh}-{n}", body)

        wall, latencies = await timed_pool(args.puts, args.put_clients, one)
    latencies.sort()
    return {
        "put_rate": args.puts / wall,
        "put_p50": latencies[len(latencies) // 2] * 1000,
        "put_p99": latencies[int(len(latencies) * 0.99)] * 1000,
    }


async def blobs(target: Target, args: argparse.Namespace, round_no: int) -> dict:
    blob = args.blob
    name = f"bench/blobs{round_no}" if target.name == "reference" else "bench/blobs"
    results: dict[str, float] = {}
    async with aiohttp.ClientSession(
        headers=target.push_headers, timeout=aiohttp.ClientTimeout(total=900)
    ) as session:
        started = time.perf_counter()
        await push_blob_monolithic(session, target.url, name, blob)
        results["blob_push_mbs"] = blob.size / (time.perf_counter() - started) / 1e6
        started = time.perf_counter()
        await pull_blob(session, target.url, name, blob.digest, blob.size)
        results["blob_pull_mbs"] = blob.size / (time.perf_counter() - started) / 1e6
        small = make_small_blobs(args.small_count, 4096)
        digests = ["sha256:" + hashlib.sha256(b).hexdigest() for b in small]
        started = time.perf_counter()
        errors = await push_small_blobs(session, target.url, name, small, digests, 16)
        if errors.failed:
            raise BenchError(f"{target.name}: {len(errors.failed)} small blob pushes failed")
        results["small_push_rate"] = args.small_count / (time.perf_counter() - started)
    return results


ROWS = [
    ("get_rps", "manifest GET by tag, req/s", "get", 0),
    ("get_p50", "manifest GET by tag, p50 ms", "get", 2),
    ("get_p99", "manifest GET by tag, p99 ms", "get", 2),
    ("get_cores", "manifest GET by tag, server CPU (cores)", "get", 2),
    ("put_rate", "manifest PUT by tag, 16 clients, PUT/s", "put", 0),
    ("put_p50", "manifest PUT by tag, p50 ms", "put", 1),
    ("put_p99", "manifest PUT by tag, p99 ms", "put", 1),
    ("blob_push_mbs", "blob push (monolithic), MB/s", "blob", 0),
    ("blob_pull_mbs", "blob pull, MB/s", "blob", 0),
    ("small_push_rate", "4 KiB blob push, 16 clients, blobs/s", "blob", 0),
]
#: Which servers each workload runs on.
ON = {
    "get": ("1 process", "--workers 2", "2 replicas + HAProxy", "reference"),
    "put": (
        "1 process",
        "--workers 2",
        "2 replicas + HAProxy",
        "PostgreSQL, 1 process",
        "reference",
    ),
    "blob": ("1 process", "PostgreSQL, 1 process", "reference"),
}


async def run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    tmp = make_tempdir(args.tmp_dir)
    evidence = Evidence()
    samples: dict[str, dict[str, list[float]]] = {}
    targets: list[Target] = []
    try:
        if "blob" in args.workloads:
            args.blob = make_blob_file(tmp / "blob.bin", args.blob_size)
        targets = await start_all(tmp, args, evidence)
        by_name = {t.name: t for t in targets}
        for round_no in range(args.rounds):
            for workload in args.workloads:
                names = ON[workload] if round_no % 2 == 0 else tuple(reversed(ON[workload]))
                for name in names:
                    target = by_name[name]
                    if workload == "get":
                        got = await get_by_tag(target, args, tmp / "wrk" / str(round_no))
                    elif workload == "put":
                        got = await manifest_puts(target, args, round_no)
                    else:
                        got = await blobs(target, args, round_no)
                    for key, value in got.items():
                        samples.setdefault(name, {}).setdefault(key, []).append(value)
                    shown = ", ".join(f"{k} {v:.1f}" for k, v in got.items())
                    print(f"round {round_no + 1} {name}: {shown}", file=sys.stderr)
    finally:
        for target in targets:
            target.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return samples


def table(samples: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    names = [
        "1 process",
        "--workers 2",
        "2 replicas + HAProxy",
        "PostgreSQL, 1 process",
        "reference",
    ]
    lines = [
        "| workload | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    rows = []
    for key, label, workload, digits in ROWS:
        if workload == "get" and len(args.connections) > 1:
            rows += [
                (f"{key}@{c}", label.replace("by tag,", f"by tag, {c} conn.,"), workload, digits)
                for c in args.connections
            ]
        else:
            rows.append((key, label, workload, digits))
    for key, label, workload, digits in rows:
        if workload not in args.workloads:
            continue
        cells = []
        for name in names:
            values = samples.get(name, {}).get(key)
            cells.append(f"{statistics.median(values):.{digits}f}" if values else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ratios = []
    one = samples.get("1 process", {})
    two = samples.get("--workers 2", {})
    ref = samples.get("reference", {})
    for connections in args.connections:
        key = "get_rps" + _at(connections, args)
        if one.get(key) and two.get(key):
            ratios.append(
                f"--workers 2 / 1 process, GET req/s at {connections} connections: "
                f"{statistics.median(two[key]) / statistics.median(one[key]):.2f}x"
            )
    for name in ("1 process", "--workers 2", "2 replicas + HAProxy", "PostgreSQL, 1 process"):
        rates = samples.get(name, {}).get("put_rate")
        if rates and ref.get("put_rate"):
            ratios.append(
                f"{name} / reference, PUT/s: "
                f"{statistics.median(rates) / statistics.median(ref['put_rate']):.2f}x"
            )
    return "\n".join([*lines, "", *ratios])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument(
        "--connections", default="16,64", help="wrk's connections for get (comma list: each)"
    )
    parser.add_argument("--puts", type=int, default=3000)
    parser.add_argument("--put-clients", type=int, default=16)
    parser.add_argument("--put-repos", type=int, default=30)
    parser.add_argument("--blob-size", type=int, default=256 * 1024 * 1024)
    parser.add_argument("--small-count", type=int, default=1000)
    parser.add_argument("--start-timeout", type=float, default=90.0)
    parser.add_argument("--tmp-dir", help="where the scratch directory goes")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    args = parser.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    try:
        args.connections = [int(c) for c in args.connections.split(",") if c]
    except ValueError:
        parser.error(f"--connections: a comma list of counts, not {args.connections!r}")
    if not args.connections or min(args.connections) < 1:
        parser.error("--connections: at least one count, each 1 or more")
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    args.wrk = wrk_available()
    if "get" in args.workloads and args.wrk is None:
        parser.error("the get workload needs wrk (apt-get install wrk)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with open("/proc/loadavg") as handle:
        before = handle.read().split()[:3]
    samples = asyncio.run(run(args))
    with open("/proc/loadavg") as handle:
        after = handle.read().split()[:3]
    print(f"load average before {' '.join(before)}, after {' '.join(after)}; {os.cpu_count()} CPUs")
    print(table(samples, args))
    if args.json is not None:
        args.json.write_text(json.dumps(samples, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
