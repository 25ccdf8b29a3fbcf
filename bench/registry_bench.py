"""Trustyard vs. the reference registry (CNCF Distribution): blob push/pull, manifest load, RSS.

    python -m bench.registry_bench                # 1 GiB blob, 3 rounds, both registries
    python -m bench.registry_bench --quick        # 64 MiB blob, 5 s manifest runs
    python -m bench.registry_bench --only trustyard --rounds 1

Both servers listen on 127.0.0.1 only and run from a scratch directory that is removed at
the end; both are stopped at the end, on Ctrl-C and on errors. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.dockerd import DockerDaemon, docker_available, start_dockerd
from bench.limit_server import disk_write_limit, small_files_write_limit
from bench.workloads import (
    MB,
    MIB,
    BenchError,
    BlobFile,
    DockerImage,
    LoadResult,
    RssMonitor,
    SeededImage,
    drop_dirty_pages,
    make_blob_file,
    make_docker_image,
    make_session,
    make_small_blobs,
    make_tempdir,
    pull_blob,
    pull_small_blobs,
    push_blob_chunked,
    push_blob_monolithic,
    push_docker_image,
    push_small_blobs,
    run_aiohttp_load,
    run_wrk,
    seed_image,
    summarize,
    tool_version,
    tree_cpu_seconds,
    wrk_available,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO_ROOT / "bench" / "results.json"
REFERENCE_BIN = "/usr/bin/docker-registry"
MANIFEST_REPO = "bench/manifest"
BLOB_SEED_REPO = "bench/blob-seed"
DOCKER_REPO = "bench/docker"
DOCKER_TAG = "v1"
NAMES = {
    "trustyard": "Trustyard",
    "reference": "reference",
    "limit": "limit",
    "trustyard_policy": "Trustyard+policy",
}
COLUMNS = ("trustyard", "reference", "limit")
WORKLOADS = ("push", "pull", "small", "manifest", "docker", "policy")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str  # formatted with the parsed arguments
    unit: str
    better: str  # higher | lower | info
    workload: str  # which --workloads name produces it
    limit: str = ""  # what the limit column measures, "" when it has none


METRICS: list[Metric] = [
    Metric("push_monolithic", "push monolithic", "MB/s", "higher", "push", "write+fsync"),
    Metric("push_chunked", "push {chunk} chunks", "MB/s", "higher", "push", "write+fsync"),
    Metric("pull", "pull", "MB/s", "higher", "pull", "sendfile"),
    Metric("pull_concurrent", "pull x{pulls} aggregate", "MB/s", "higher", "pull", "sendfile"),
    Metric(
        "small_push",
        "push {small_count} x {small_size}, {small_clients} clients",
        "ops/s",
        "higher",
        "small",
        "write+fsync",
    ),
    Metric(
        "small_pull",
        "pull {small_count} x {small_size}, {small_clients} clients",
        "ops/s",
        "higher",
        "small",
        "sendfile",
    ),
    Metric("manifest_get_tag_rps", "manifest GET tag", "req/s", "higher", "manifest", "static"),
    Metric("manifest_get_tag_p50", "manifest GET tag p50", "ms", "lower", "manifest", "static"),
    Metric("manifest_get_tag_p99", "manifest GET tag p99", "ms", "lower", "manifest", "static"),
    Metric(
        "manifest_get_tag_gen_cpu",
        "  load generator CPU ({get_tool})",
        "cores",
        "info",
        "manifest",
        "static",
    ),
    Metric(
        "manifest_get_tag_srv_cpu", "  server CPU", "cores", "info", "manifest", "static"
    ),
    Metric(
        "manifest_head_digest_rps", "manifest HEAD digest", "req/s", "higher", "manifest", "static"
    ),
    Metric(
        "manifest_head_digest_p50", "manifest HEAD digest p50", "ms", "lower", "manifest", "static"
    ),
    Metric(
        "manifest_head_digest_p99", "manifest HEAD digest p99", "ms", "lower", "manifest", "static"
    ),
    Metric(
        "manifest_head_digest_gen_cpu",
        "  load generator CPU (aiohttp)",
        "cores",
        "info",
        "manifest",
        "static",
    ),
    Metric(
        "manifest_head_digest_srv_cpu", "  server CPU", "cores", "info", "manifest", "static"
    ),
    Metric("policy_get_tag_rps", "{rules}-rule policy: GET tag", "req/s", "higher", "policy"),
    Metric("policy_get_tag_p50", "{rules}-rule policy: GET tag p50", "ms", "lower", "policy"),
    Metric("policy_get_tag_p99", "{rules}-rule policy: GET tag p99", "ms", "lower", "policy"),
    Metric(
        "policy_head_digest_rps", "{rules}-rule policy: HEAD digest", "req/s", "higher", "policy"
    ),
    Metric(
        "policy_head_digest_p50", "{rules}-rule policy: HEAD digest p50", "ms", "lower", "policy"
    ),
    Metric(
        "policy_head_digest_p99", "{rules}-rule policy: HEAD digest p99", "ms", "lower", "policy"
    ),
    Metric(
        "docker_pull_s",
        "docker pull, {docker_layers} layers, {docker_size}, cold",
        "s",
        "lower",
        "docker",
    ),
    Metric("rss_blob_mb", "peak RSS, push+pull", "MB", "lower", "push,pull"),
    Metric("rss_manifest_mb", "peak RSS, manifests", "MB", "lower", "manifest"),
]
METRIC_BY_KEY = {m.key: m for m in METRICS}


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A registry under test."""

    key: str
    url: str
    pid: int
    log_path: Path
    stop: Callable[[], Any]

    @property
    def name(self) -> str:
        return NAMES[self.key]

    @property
    def column(self) -> str:
        """The table column its samples go to (the policy server's go to Trustyard's)."""
        return "trustyard" if self.key == "trustyard_policy" else self.key

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll GET /v2/ until it answers 200 (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 1):
        if time.monotonic() > deadline:
            break
        if process.poll() is not None:
            raise BenchError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v2/", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise BenchError(f"{url}/v2/ did not answer 200 within {timeout}s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


REFERENCE_CONFIG = """\
version: 0.1
log:
  level: {log_level}
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {data}
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
"""


def start_reference(tmp: Path, binary: str, log_level: str, timeout: float) -> Server:
    """Start CNCF Distribution (`docker-registry serve CONFIG`) on a free loopback port."""
    from tests.server_process import free_port

    root = tmp / "reference"
    data = root / "data"
    data.mkdir(parents=True)
    port = free_port()
    config = root / "config.yml"
    config.write_text(REFERENCE_CONFIG.format(data=data, port=port, log_level=log_level))
    log_path = root / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    server = Server("reference", url, process.pid, log_path, lambda: stop_process(process))
    try:
        wait_ready(url, process, timeout)
    except BaseException:
        stop_process(process)
        raise BenchError(f"reference registry did not start:\n{server.log_tail()}") from None
    return server


def start_trustyard(tmp: Path, timeout: float) -> Server:
    """Start `python -m registry serve` through the tests' helper."""
    from tests.server_process import start_registry

    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    }
    proc = start_registry(tmp / "trustyard" / "data", env=env, timeout=timeout)
    return Server("trustyard", proc.url, proc.process.pid, proc.log_path, lambda: proc.stop())


# --------------------------------------------------------------------------- running


class Recorder:
    """Samples and errors per metric and registry."""

    def __init__(self, keys: list[str]) -> None:
        self.samples: dict[str, dict[str, list[float]]] = {
            m[0]: {k: [] for k in keys} for m in METRICS
        }
        self.errors: dict[str, dict[str, list[str]]] = {
            m[0]: {k: [] for k in keys} for m in METRICS
        }
        self.details: list[dict[str, Any]] = []

    def add(self, metric: str, key: str, value: float) -> None:
        self.samples[metric][key].append(value)

    def fail(self, metrics: list[str], key: str, message: str) -> None:
        for metric in metrics:
            self.errors[metric][key].append(message)


async def attempt(
    rec: Recorder,
    server: Server,
    metrics: list[str],
    what: str,
    round_no: int,
    fn: Callable[[], Awaitable[Any]],
    timeout: float,
) -> tuple[Any, float] | None:
    """Run and time one measurement; record a failure instead of aborting the whole bench."""
    t0 = time.perf_counter()
    try:
        result = await asyncio.wait_for(fn(), timeout=timeout)
    except (BenchError, aiohttp.ClientError, TimeoutError, OSError) as exc:
        message = f"{type(exc).__name__}: {exc}".strip()
        print(f"  ! {server.name} {what}, round {round_no + 1}: {message[:300]}", file=sys.stderr)
        rec.fail(metrics, server.key, message[:1000])
        return None
    return result, time.perf_counter() - t0


def note(server: Server, what: str, text: str) -> None:
    print(f"  {server.name:<9} {what:<24} {text}", flush=True)


async def measure_blob(
    rec: Recorder,
    servers: list[Server],
    blob: BlobFile,
    round_no: int,
    args: argparse.Namespace,
) -> None:
    """Workloads 1-2: push monolithic, push chunked, pull, concurrent pulls, per registry."""
    mono = f"bench/blob-r{round_no}-mono"
    chunked = f"bench/blob-r{round_no}-chunked"
    mb = blob.size / MB
    pulled_from: dict[str, str] = {}
    async with make_session(args.pulls + 4, timeout=args.op_timeout) as session:
        for server in servers:
            drop_dirty_pages()
            got = await attempt(
                rec,
                server,
                ["push_monolithic"],
                "push monolithic",
                round_no,
                lambda s=server: push_blob_monolithic(session, s.url, mono, blob),
                args.op_timeout,
            )
            if got:
                pulled_from[server.key] = mono
                rec.add("push_monolithic", server.key, mb / got[1])
                note(server, "push monolithic", f"{mb / got[1]:9.1f} MB/s  ({got[1]:.2f} s)")
        for server in servers:
            drop_dirty_pages()
            got = await attempt(
                rec,
                server,
                ["push_chunked"],
                "push chunked",
                round_no,
                lambda s=server: push_blob_chunked(session, s.url, chunked, blob, args.chunk_size),
                args.op_timeout,
            )
            if got:
                pulled_from.setdefault(server.key, chunked)
                rec.add("push_chunked", server.key, mb / got[1])
                note(server, "push 8 MiB chunks", f"{mb / got[1]:9.1f} MB/s  ({got[1]:.2f} s)")
        for server in servers:
            drop_dirty_pages()
            repo = pulled_from.get(server.key, mono)
            got = await attempt(
                rec,
                server,
                ["pull"],
                "pull",
                round_no,
                lambda s=server, r=repo: pull_blob(session, s.url, r, blob.digest, blob.size),
                args.op_timeout,
            )
            if got:
                rec.add("pull", server.key, mb / got[1])
                note(server, "pull", f"{mb / got[1]:9.1f} MB/s  ({got[1]:.2f} s)")
        for server in servers:
            drop_dirty_pages()
            repo = pulled_from.get(server.key, mono)

            async def many(s: Server = server, r: str = repo) -> list[int]:
                return await asyncio.gather(
                    *(
                        pull_blob(session, s.url, r, blob.digest, blob.size)
                        for _ in range(args.pulls)
                    )
                )

            got = await attempt(
                rec,
                server,
                ["pull_concurrent"],
                f"pull x{args.pulls}",
                round_no,
                many,
                args.op_timeout,
            )
            if got:
                total = sum(got[0]) / MB
                rec.add("pull_concurrent", server.key, total / got[1])
                note(server, f"pull x{args.pulls}", f"{total / got[1]:9.1f} MB/s  ({got[1]:.2f} s)")


async def load(
    url: str, method: str, args: argparse.Namespace, duration: float, tmp: Path
) -> LoadResult:
    """One fixed-duration manifest run, with wrk or the aiohttp fallback.

    wrk cannot measure HEAD (its parser then waits for a body the size of Content-Length and
    every request stalls: wg/wrk#198), so HEAD always uses the multi-process aiohttp client.
    """
    if args.wrk and method != "HEAD":
        return await run_wrk(args.wrk, url, method, args.connections, duration, tmp)
    return await run_aiohttp_load(url, method, args.connections, duration, args.load_processes)


async def measure_manifests(
    rec: Recorder,
    servers: list[Server],
    seeds: dict[str, SeededImage],
    round_no: int,
    args: argparse.Namespace,
    tmp: Path,
) -> None:
    """Workload 3: GET by tag, then HEAD by digest, registry by registry."""
    for prefix, method, what in (
        ("manifest_get_tag", "GET", "manifest GET tag"),
        ("manifest_head_digest", "HEAD", "manifest HEAD digest"),
    ):
        metrics = [f"{prefix}_rps", f"{prefix}_p50", f"{prefix}_p99"]
        for server in servers:
            seed = seeds.get(server.key)
            if seed is None:
                rec.fail(metrics, server.key, "image was not seeded")
                continue
            ref = seed.tag if method == "GET" else seed.digest
            url = f"{server.url}/v2/{seed.name}/manifests/{ref}"
            got = await attempt(
                rec,
                server,
                metrics,
                what,
                round_no,
                lambda u=url, m=method: load(u, m, args, args.duration, tmp),
                args.duration + 120,
            )
            if not got:
                continue
            res: LoadResult = got[0]
            rec.details.append(
                {"round": round_no + 1, "registry": server.key, "workload": prefix, **vars(res)}
            )
            errs = f"  errors {res.errors}" if res.errors else ""
            note(
                server,
                what,
                f"{res.rps:9.0f} req/s  p50 {res.p50_ms:.2f} ms  p99 {res.p99_ms:.2f} ms{errs}",
            )
            if res.requests == 0 or res.error_count > res.requests * 0.01:
                rec.fail(
                    metrics,
                    server.key,
                    f"{res.error_count} of {res.requests} requests failed: {res.errors}",
                )
                print(f"  ! {server.name} {what}: too many errors, sample dropped", file=sys.stderr)
                continue
            rec.add(f"{prefix}_rps", server.key, res.rps)
            rec.add(f"{prefix}_p50", server.key, res.p50_ms)
            rec.add(f"{prefix}_p99", server.key, res.p99_ms)


async def run_bench(
    servers: list[Server], blob: BlobFile, args: argparse.Namespace, tmp: Path
) -> Recorder:
    """Seed, warm up, then `rounds` rounds of every workload, alternating the registries' order."""
    rec = Recorder([s.key for s in servers])
    seeds: dict[str, SeededImage] = {}
    # SIGTERM cancels the run like Ctrl-C does, so every `finally` (wrk, load processes) runs.
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with make_session(8, timeout=120) as session:
        for server in servers:
            try:
                seeds[server.key] = await asyncio.wait_for(
                    seed_image(session, server.url, MANIFEST_REPO), 120
                )
            except (BenchError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                print(
                    f"  ! {server.name}: seeding the manifest image failed: {exc}", file=sys.stderr
                )
    if args.warmup > 0:
        for server in servers:
            if server.key in seeds:
                seed = seeds[server.key]
                url = f"{server.url}/v2/{seed.name}/manifests/{seed.tag}"
                try:
                    await asyncio.wait_for(
                        load(url, "GET", args, args.warmup, tmp), args.warmup + 60
                    )
                except (BenchError, TimeoutError, OSError) as exc:
                    print(f"  ! {server.name}: warm-up failed: {exc}", file=sys.stderr)
    for round_no in range(args.rounds):
        order = servers if round_no % 2 == 0 else list(reversed(servers))
        print(
            f"round {round_no + 1}/{args.rounds}: " + " then ".join(s.name for s in order),
            flush=True,
        )
        for phase, fn in (
            ("rss_blob_mb", lambda o=order, r=round_no: measure_blob(rec, o, blob, r, args)),
            (
                "rss_manifest_mb",
                lambda o=order, r=round_no: measure_manifests(rec, o, seeds, r, args, tmp),
            ),
        ):
            monitors = {s.key: RssMonitor(s.pid, interval=0.05).start() for s in servers}
            try:
                await fn()
            finally:
                for server in servers:
                    peak = monitors[server.key].stop()
                    rec.add(phase, server.key, float(peak["peak_mb"]))
                    rec.details.append(
                        {"round": round_no + 1, "registry": server.key, "workload": phase, **peak}
                    )
                    note(server, phase.replace("_mb", ""), f"{peak['peak_mb']:9.1f} MB peak RSS")
        for server in servers:
            if not alive(server):
                raise BenchError(
                    f"{server.name} died during round {round_no + 1}:\n{server.log_tail()}"
                )
    return rec


def alive(server: Server) -> bool:
    try:
        os.kill(server.pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{server.pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------- report


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(summary: dict[str, float | None], errors: list[str], n_rounds: int) -> str:
    if summary["median"] is None:
        return "error" if errors else "-"
    text = f"{fmt(summary['median'])} ({fmt(summary['min'])}-{fmt(summary['max'])})"
    if errors:
        text += f" [{len(errors)}/{n_rounds} failed]"
    return text


def build_report(rec: Recorder, keys: list[str], args: argparse.Namespace) -> dict[str, Any]:
    workloads: dict[str, Any] = {}
    for key, label, unit, better in METRICS:
        entry: dict[str, Any] = {
            "label": label.format(pulls=args.pulls),
            "unit": unit,
            "better": better,
        }
        for reg in keys:
            entry[reg] = {
                **summarize(rec.samples[key][reg]),
                "samples": rec.samples[key][reg],
                "errors": rec.errors[key][reg],
            }
        t = entry.get("trustyard", {}).get("median")
        r = entry.get("reference", {}).get("median")
        entry["ratio_trustyard_to_reference"] = t / r if t is not None and r else None
        workloads[key] = entry
    return workloads


def render_table(
    workloads: dict[str, Any], keys: list[str], args: argparse.Namespace, blob_size: int
) -> str:
    header = ["workload", "Trustyard", "reference", "ratio"]
    rows = []
    for entry in workloads.values():
        arrow = "↑" if entry["better"] == "higher" else "↓"
        cells = [f"{entry['label']} ({entry['unit']}) {arrow}"]
        for reg in ("trustyard", "reference"):
            if reg in keys:
                cells.append(cell(entry[reg], entry[reg]["errors"], args.rounds))
            else:
                cells.append("skipped")
        ratio = entry["ratio_trustyard_to_reference"]
        cells.append(f"{ratio:.2f}x" if ratio is not None else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    line = lambda cs: "| " + " | ".join(c.ljust(w) for c, w in zip(cs, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    tool = "wrk for GET, aiohttp for HEAD" if args.wrk else "aiohttp (multi-process)"
    out = [
        f"blob {human(blob_size)}, {args.rounds} round(s), {args.connections} connections, "
        f"{args.duration:g} s per manifest run, load tool: {tool}",
        "cells: median (min-max) over rounds; ratio = Trustyard median / reference median; "
        "↑ higher is better, ↓ lower is better; MB = 10^6 bytes",
        line(header),
        sep,
        *(line(r) for r in rows),
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- CLI


SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`1GiB`, `64MiB`, `500MB`, `4096` -> bytes (a bare K/M/G means KiB/MiB/GiB)."""
    match = SIZE_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size: {text!r}")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    if not unit or unit == "b":
        return int(number)
    power = "kmgt".index(unit[0]) + 1
    base = 1000 if unit.endswith("b") and "i" not in unit else 1024
    return int(number * base**power)


def human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.registry_bench",
        description="Benchmark Trustyard against the reference registry (CNCF Distribution).",
    )
    parser.add_argument(
        "--blob-size", type=parse_size, default=None, help="blob size (default 1GiB)"
    )
    parser.add_argument("--quick", action="store_true", help="64 MiB blob, 5 s manifest runs")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per workload (default 3)")
    parser.add_argument(
        "--connections", type=int, default=32, help="manifest load connections (32)"
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds per manifest run (10; quick 5)"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="manifest warm-up seconds (2)")
    parser.add_argument("--pulls", type=int, default=16, help="concurrent pulls (16)")
    parser.add_argument("--chunk-size", type=parse_size, default=8 * MIB, help="PATCH size (8MiB)")
    parser.add_argument(
        "--only", choices=["trustyard", "reference"], help="bench one registry only"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help=f"results file ({DEFAULT_JSON.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--no-wrk", action="store_true", help="use the aiohttp load client even if wrk exists"
    )
    parser.add_argument(
        "--load-processes", type=int, default=None, help="aiohttp load processes (CPU count)"
    )
    parser.add_argument(
        "--reference-bin", default=REFERENCE_BIN, help=f"Distribution binary ({REFERENCE_BIN})"
    )
    parser.add_argument(
        "--reference-log-level", default="error", help="Distribution log level (error)"
    )
    parser.add_argument(
        "--tmp-dir", default=None, help="parent of the scratch directory (system temp)"
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--op-timeout", type=float, default=1800.0, help="cap per push/pull step, s"
    )
    parser.add_argument(
        "--start-timeout", type=float, default=60.0, help="cap on server start-up, s"
    )
    args = parser.parse_args(argv)
    if args.blob_size is None:
        args.blob_size = 64 * MIB if args.quick else 1 << 30
    if args.duration is None:
        args.duration = 5.0 if args.quick else 10.0
    if not 1 <= args.rounds <= 100:
        parser.error("--rounds must be 1..100")
    if not 1 <= args.connections <= 10_000 or not 1 <= args.pulls <= 256:
        parser.error("--connections must be 1..10000 and --pulls 1..256")
    if args.blob_size <= 0 or args.chunk_size <= 0:
        parser.error("sizes must be positive")
    args.wrk = None if args.no_wrk else wrk_available()
    return args


def metadata(args: argparse.Namespace, servers: list[Server], blob: BlobFile) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
        },
        "blob_size": blob.size,
        "blob_digest": blob.digest,
        "rounds": args.rounds,
        "connections": args.connections,
        "manifest_duration_s": args.duration,
        "concurrent_pulls": args.pulls,
        "chunk_size": args.chunk_size,
        "load_tool": {"GET": "wrk" if args.wrk else "aiohttp", "HEAD": "aiohttp"},
        "wrk": tool_version([args.wrk, "--version"]) if args.wrk else None,
        "reference": tool_version([args.reference_bin, "--version"])
        if any(s.key == "reference" for s in servers)
        else None,
        "registries": {s.key: s.url for s in servers},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = [k for k in ("trustyard", "reference") if args.only in (None, k)]
    if "reference" in keys and not os.access(args.reference_bin, os.X_OK):
        print(
            f"reference binary {args.reference_bin} not found (apt-get install docker-registry)",
            file=sys.stderr,
        )
        return 2

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)  # outside the event loop; inside, it cancels the run
    tmp = make_tempdir(args.tmp_dir)
    servers: list[Server] = []
    try:
        print(f"scratch dir {tmp}; writing a {human(args.blob_size)} random blob ...", flush=True)
        t0 = time.perf_counter()
        blob = make_blob_file(tmp / "blob.bin", args.blob_size)
        print(f"  {blob.digest} in {time.perf_counter() - t0:.1f} s", flush=True)
        for key in keys:
            if key == "trustyard":
                servers.append(start_trustyard(tmp, args.start_timeout))
            else:
                servers.append(
                    start_reference(
                        tmp, args.reference_bin, args.reference_log_level, args.start_timeout
                    )
                )
            print(f"  {servers[-1].name} at {servers[-1].url} (pid {servers[-1].pid})", flush=True)
        try:
            rec = asyncio.run(run_bench(servers, blob, args, tmp))
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        finally:
            signal.signal(signal.SIGTERM, on_term)  # closing the loop reset it
        workloads = build_report(rec, keys, args)
        table = render_table(workloads, keys, args, blob.size)
        print()
        print(table)
        report = {
            "meta": metadata(args, servers, blob),
            "workloads": workloads,
            "details": rec.details,
            "table": table,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the servers", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        for child in multiprocessing.active_children():  # load processes, if interrupted
            child.kill()
        for server in servers:
            try:
                server.stop()
            except Exception as exc:
                print(
                    f"stopping {server.name} failed: {exc}; killing pid {server.pid}",
                    file=sys.stderr,
                )
                with contextlib.suppress(OSError):
                    os.kill(server.pid, signal.SIGKILL)
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
