"""The workloads of the registry benchmark: blob push/pull, manifest requests, RSS sampling.

Everything here talks plain OCI Distribution HTTP to a base URL such as
``http://127.0.0.1:5000``; nothing depends on which registry answers.
Every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import math
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from yarl import URL

MB = 1_000_000  # throughput and RSS are reported in MB = 10**6 bytes
MIB = 1 << 20
CHUNK_SIZE = 8 * MIB  # chunked-upload PATCH size
READ_CHUNK = 1 * MIB  # client-side file read size when streaming a body
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class BenchError(RuntimeError):
    """A registry answered something the benchmark cannot use."""


# --------------------------------------------------------------------------- blob file


@dataclass(frozen=True)
class BlobFile:
    """A file of random bytes on disk, with its OCI digest."""

    path: Path
    size: int
    digest: str


def make_blob_file(path: Path, size: int, chunk: int = CHUNK_SIZE) -> BlobFile:
    """Write `size` random bytes to `path` (os.urandom chunks), hashing while writing."""
    sha = hashlib.sha256()
    remaining = size
    with path.open("wb") as out:
        for _ in range(math.ceil(size / chunk) if size else 0):  # bounded by size
            data = os.urandom(min(chunk, remaining))
            sha.update(data)
            out.write(data)
            remaining -= len(data)
    if remaining:
        raise BenchError(f"short write for {path}: {remaining} bytes left")
    return BlobFile(path, size, "sha256:" + sha.hexdigest())


async def file_body(path: Path, offset: int, length: int) -> AsyncIterator[bytes]:
    """Stream `length` bytes of `path` from `offset`, READ_CHUNK at a time (never all in memory).

    The reads are plain blocking reads: the blob was just written, so it sits in the page
    cache and each 1 MiB read takes well under a millisecond.
    """
    with path.open("rb") as src:
        src.seek(offset)
        remaining = length
        for _ in range(math.ceil(length / READ_CHUNK) + 1):  # bounded by length
            if remaining <= 0:
                break
            data = src.read(min(READ_CHUNK, remaining))
            if not data:
                raise BenchError(f"{path} ended {remaining} bytes early")
            remaining -= len(data)
            yield data


# --------------------------------------------------------------------------- HTTP helpers


def make_session(connections: int = 32, timeout: float = 600.0) -> aiohttp.ClientSession:
    """A client session with a large read buffer and no automatic decompression."""
    connector = aiohttp.TCPConnector(limit=max(connections, 64), limit_per_host=0)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=10),
        auto_decompress=False,
        read_bufsize=4 * MIB,
    )


def resolve_location(base_url: str, location: str | None) -> str:
    """Resolve a (maybe relative) Location header against the registry's base URL."""
    if not location:
        raise BenchError("upload response has no Location header")
    return str(URL(base_url + "/").join(URL(location, encoded=True)))


def with_digest(location: str, digest: str) -> str:
    """Append `digest=` to an upload URL, with `&` when it already has a query."""
    sep = "&" if "?" in location else "?"
    return f"{location}{sep}digest={digest}"


async def _expect(resp: aiohttp.ClientResponse, *statuses: int, what: str) -> None:
    if resp.status not in statuses:
        body = (await resp.read())[:500]
        raise BenchError(f"{what}: HTTP {resp.status} (wanted {statuses}): {body!r}")


async def start_upload(session: aiohttp.ClientSession, base_url: str, name: str) -> str:
    """POST /v2/<name>/blobs/uploads/ and return the absolute upload URL."""
    async with session.post(
        f"{base_url}/v2/{name}/blobs/uploads/", headers={"Content-Length": "0"}
    ) as resp:
        await _expect(resp, 202, what=f"POST upload {name}")
        await resp.read()
        return resolve_location(base_url, resp.headers.get("Location"))


async def push_blob_monolithic(
    session: aiohttp.ClientSession, base_url: str, name: str, blob: BlobFile
) -> None:
    """POST, then one PUT ?digest= whose body streams the whole file."""
    location = await start_upload(session, base_url, name)
    async with session.put(
        URL(with_digest(location, blob.digest), encoded=True),
        data=file_body(blob.path, 0, blob.size),
        headers={"Content-Length": str(blob.size), "Content-Type": "application/octet-stream"},
    ) as resp:
        await _expect(resp, 201, what=f"PUT monolithic {name}")
        await resp.read()


async def push_blob_chunked(
    session: aiohttp.ClientSession,
    base_url: str,
    name: str,
    blob: BlobFile,
    chunk_size: int = CHUNK_SIZE,
) -> None:
    """POST, one PATCH with Content-Range per chunk, then PUT ?digest= with no body."""
    location = await start_upload(session, base_url, name)
    n_chunks = math.ceil(blob.size / chunk_size)
    for index in range(n_chunks):  # bounded by the blob size
        start = index * chunk_size
        length = min(chunk_size, blob.size - start)
        async with session.patch(
            URL(location, encoded=True),
            data=file_body(blob.path, start, length),
            headers={
                "Content-Length": str(length),
                "Content-Range": f"{start}-{start + length - 1}",
                "Content-Type": "application/octet-stream",
            },
        ) as resp:
            await _expect(resp, 202, what=f"PATCH chunk {index} of {name}")
            await resp.read()
            location = resolve_location(base_url, resp.headers.get("Location"))
    async with session.put(
        URL(with_digest(location, blob.digest), encoded=True),
        headers={"Content-Length": "0"},
    ) as resp:
        await _expect(resp, 201, what=f"PUT close chunked {name}")
        await resp.read()


async def pull_blob(
    session: aiohttp.ClientSession, base_url: str, name: str, digest: str, size: int
) -> int:
    """GET the blob, read and discard the stream; return the byte count (checked against size)."""
    got = 0
    async with session.get(f"{base_url}/v2/{name}/blobs/{digest}") as resp:
        await _expect(resp, 200, what=f"GET blob {name}")
        async for data in resp.content.iter_any():  # bounded: ends with the body
            got += len(data)
    if got != size:
        raise BenchError(f"GET blob {name}: got {got} bytes, expected {size}")
    return got


async def push_small_blob(
    session: aiohttp.ClientSession, base_url: str, name: str, data: bytes
) -> str:
    """Monolithic push of an in-memory blob (used only for seeding); returns its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    location = await start_upload(session, base_url, name)
    async with session.put(
        URL(with_digest(location, digest), encoded=True),
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:
        await _expect(resp, 201, what=f"PUT small blob {name}")
        await resp.read()
    return digest


@dataclass(frozen=True)
class SeededImage:
    """The small image the manifest workload reads."""

    name: str
    tag: str
    digest: str
    size: int
    manifest: bytes = b""


def _small_layer() -> tuple[bytes, str]:
    """A real (tiny) gzipped tar layer and its uncompressed diff_id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        payload = b"trustyard benchmark layer\n"
        info = tarfile.TarInfo("bench/hello.txt")
        info.size = len(payload)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


async def seed_image(
    session: aiohttp.ClientSession,
    base_url: str,
    name: str,
    tag: str = "bench",
    evidence: Callable[[str], Awaitable[None]] | None = None,
) -> SeededImage:
    """Push config blob + one layer + an OCI image manifest tagged `tag`, over HTTP; then
    `evidence(digest)` (signatures, scans the policy asks for) before the pulls are checked."""
    layer, diff_id = _small_layer()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        separators=(",", ":"),
    ).encode()
    config_digest = await push_small_blob(session, base_url, name, config)
    layer_digest = await push_small_blob(session, base_url, name, layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
            "annotations": {"org.opencontainers.image.title": "trustyard-bench"},
        },
        separators=(",", ":"),
    ).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    async with session.put(
        f"{base_url}/v2/{name}/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    ) as resp:
        await _expect(resp, 201, what=f"PUT manifest {name}:{tag}")
        await resp.read()
        answered = resp.headers.get("Docker-Content-Digest")
    if answered and answered != digest:
        raise BenchError(f"manifest digest mismatch: server {answered}, computed {digest}")
    if evidence is not None:
        await evidence(digest)
    # Check both access paths once, so the timed runs measure successes.
    async with session.get(
        f"{base_url}/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
    ) as resp:
        await _expect(resp, 200, what=f"GET manifest {name}:{tag}")
        if await resp.read() != manifest:
            raise BenchError("GET manifest by tag returned other bytes than were pushed")
    async with session.head(
        f"{base_url}/v2/{name}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}
    ) as resp:
        await _expect(resp, 200, what=f"HEAD manifest {name}@{digest}")
    async with session.get(f"{base_url}/v2/{name}/blobs/{layer_digest}") as resp:
        await _expect(resp, 200, what=f"GET blob {name}@{layer_digest}")
        if await resp.read() != layer:
            raise BenchError("GET blob returned other bytes than were pushed")
    return SeededImage(name, tag, digest, len(manifest), manifest)


# --------------------------------------------------------------------------- manifest load


@dataclass
class LoadResult:
    """One fixed-duration request-rate run."""

    tool: str
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    cpu_s: float | None = None  # CPU seconds the load generator used (user + system)

    @property
    def generator_cores(self) -> float | None:
        """The load generator's average CPU use, in cores (1.0 = one core busy)."""
        return self.cpu_s / self.duration_s if self.cpu_s is not None and self.duration_s else None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


WRK_LUA = """\
wrk.method = "{method}"
wrk.headers["Accept"] = "{accept}"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {{"requests":%.0f,"duration_us":%.0f,"p50_us":%.0f,"p99_us":%.0f,' ..
    '"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk_available(path: str = "wrk") -> str | None:
    """The wrk executable, or None."""
    return shutil.which(path)


async def run_wrk(
    wrk: str,
    url: str,
    method: str,
    connections: int,
    duration: float,
    workdir: Path,
    threads: int | None = None,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Run wrk for `duration` seconds with a Lua script that prints JSON from `done` (with
    `headers` added to every request, e.g. a bearer token)."""
    script = workdir / f"wrk-{method.lower()}.lua"
    extra = "".join(
        f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}\n"
        for name, value in (headers or {}).items()
    )
    script.write_text(WRK_LUA.format(method=method, accept=OCI_MANIFEST) + extra)
    threads = threads or max(1, min(connections, os.cpu_count() or 1))
    args = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    cpu0 = children_cpu_seconds()
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=duration + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    cpu_s = children_cpu_seconds() - cpu0
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCHJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {text}\n{err.decode(errors='replace')}")
    data = json.loads(line.removeprefix("BENCHJSON "))
    secs = data["duration_us"] / 1e6
    errors = {k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout")}
    return LoadResult(
        tool="wrk",
        requests=int(data["requests"]),
        duration_s=secs,
        rps=data["requests"] / secs if secs else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors={k: v for k, v in errors.items() if v},
        cpu_s=cpu_s,
    )


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, math.ceil(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


async def _client_worker_loop(
    url: str, method: str, concurrency: int, duration: float, max_requests: int, start_at: float
) -> tuple[list[float], dict[str, int]]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    headers = {"Accept": OCI_MANIFEST}
    async with make_session(concurrency, timeout=10) as session:
        # All processes start together at wall-clock `start_at` (after their imports).
        await asyncio.sleep(min(30.0, max(0.0, start_at - time.time())))
        deadline = time.monotonic() + duration

        async def worker() -> None:
            for _ in range(max_requests):  # bounded in count and by the deadline
                if time.monotonic() >= deadline:
                    return
                start = time.perf_counter()
                try:
                    async with session.request(method, url, headers=headers) as resp:
                        await resp.read()
                        ok = 200 <= resp.status < 400
                except (aiohttp.ClientError, TimeoutError):
                    errors["connect/read"] = errors.get("connect/read", 0) + 1
                    continue
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors["status"] = errors.get("status", 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def _client_process(
    args: tuple[str, str, int, float, int, float],
) -> tuple[list[float], dict[str, int]]:
    """Entry point of one load process (spawned, so it must stay importable)."""
    return asyncio.run(_client_worker_loop(*args))


async def run_aiohttp_load(
    url: str, method: str, connections: int, duration: float, processes: int | None = None
) -> LoadResult:
    """Fallback when wrk is missing (and always for HEAD): processes, each an aiohttp client."""
    processes = max(1, min(processes or (os.cpu_count() or 1), connections))
    per = [connections // processes + (i < connections % processes) for i in range(processes)]
    max_requests = 10_000_000
    start_at = time.time() + 2.0  # room for the spawned processes to import aiohttp
    loop = asyncio.get_running_loop()
    cpu0 = children_cpu_seconds()  # the workers are reaped by shutdown(wait=True) below
    # spawn, not fork: the benchmark process has threads (the RSS samplers).
    executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [
            loop.run_in_executor(
                executor, _client_process, (url, method, n, duration, max_requests, start_at)
            )
            for n in per
        ]
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures), timeout=duration + 60)
        except BrokenProcessPool as exc:
            raise BenchError(f"a load process died: {exc}") from exc
    finally:
        for proc in list(getattr(executor, "_processes", {}).values()):
            if proc.is_alive():
                proc.kill()
        executor.shutdown(wait=True, cancel_futures=True)
    # Includes the ~2 s of interpreter start-up and imports before `start_at`: an upper bound.
    cpu_s = children_cpu_seconds() - cpu0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    for lats, errs in results:
        latencies.extend(lats)
        for key, value in errs.items():
            errors[key] = errors.get(key, 0) + value
    latencies.sort()
    return LoadResult(
        tool="aiohttp",
        requests=len(latencies) + sum(errors.values()),
        duration_s=duration,
        rps=len(latencies) / duration,
        p50_ms=_percentile(latencies, 50) * 1000,
        p99_ms=_percentile(latencies, 99) * 1000,
        errors=errors,
        cpu_s=cpu_s,
    )


# --------------------------------------------------------------------------- RSS


def _proc_status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (via /proc/PID/task/TID/children, else a /proc scan)."""
    found = [pid]
    try:
        for _ in range(10_000):  # bounded breadth-first walk
            progressed = False
            for parent in list(found):
                for tid in os.listdir(f"/proc/{parent}/task"):
                    with open(f"/proc/{parent}/task/{tid}/children") as kids:
                        for kid in kids.read().split():
                            if int(kid) not in found:
                                found.append(int(kid))
                                progressed = True
            if not progressed:
                break
        return found
    except OSError:
        pass
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found = [pid]
    for _ in range(len(parents) + 1):  # bounded
        more = [p for p, pp in parents.items() if pp in found and p not in found]
        if not more:
            break
        found.extend(more)
    return found


class RssMonitor:
    """Peak resident memory of a server's process tree during a phase.

    Samples the summed VmRSS every `interval` seconds in a thread and, where the kernel
    allows resetting it (writing 5 to /proc/PID/clear_refs), also reads VmHWM at the end.
    """

    def __init__(self, pid: int, interval: float = 0.05, max_seconds: float = 6 * 3600) -> None:
        self.pid = pid
        self.interval = interval
        self.max_seconds = max_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_sampled_kb = 0
        self.samples = 0
        self.hwm_reset = False
        self.tree_size = 1

    def _sample(self) -> None:
        pids = process_tree(self.pid)
        self.tree_size = max(self.tree_size, len(pids))
        deadline = time.monotonic() + self.max_seconds
        for i in range(int(self.max_seconds / self.interval) + 1):  # bounded in count and time
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            if i % 20 == 19:
                pids = process_tree(self.pid)
                self.tree_size = max(self.tree_size, len(pids))
            total = sum(_proc_status_kb(p, "VmRSS") or 0 for p in pids)
            self.peak_sampled_kb = max(self.peak_sampled_kb, total)
            self.samples += 1
            self._stop.wait(self.interval)

    def start(self) -> RssMonitor:
        try:
            for pid in process_tree(self.pid):
                with open(f"/proc/{pid}/clear_refs", "w") as refs:
                    refs.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self._thread = threading.Thread(target=self._sample, name=f"rss-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float | int | bool | None]:
        """Stop sampling; return the peak in MB and how it was obtained."""
        hwm_kb = None
        if self.hwm_reset:
            hwm_kb = sum(_proc_status_kb(p, "VmHWM") or 0 for p in process_tree(self.pid))
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        peak_kb = max(self.peak_sampled_kb, hwm_kb or 0)
        return {
            "peak_mb": peak_kb * 1024 / MB,
            "sampled_peak_mb": self.peak_sampled_kb * 1024 / MB,
            "vmhwm_mb": hwm_kb * 1024 / MB if hwm_kb is not None else None,
            "samples": self.samples,
            "processes": self.tree_size,
        }


# --------------------------------------------------------------------------- CPU


def children_cpu_seconds() -> float:
    """User + system CPU of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU so far of `pid` and its live descendants (from /proc/PID/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            continue
    return total / ticks


# --------------------------------------------------------------------------- small blobs


def make_small_blobs(count: int, size: int) -> list[bytes]:
    """`count` distinct random blobs of `size` bytes."""
    return [os.urandom(size) for _ in range(count)]


@dataclass
class OpErrors:
    """Failed operations of a many-small-requests run: their indexes and first messages."""

    failed: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def add(self, index: int, exc: BaseException) -> None:
        self.failed.append(index)
        if len(self.messages) < 5:
            self.messages.append(f"#{index}: {type(exc).__name__}: {exc}"[:300])


async def _bounded_pool(
    indexes: list[int], concurrency: int, op: Callable[[int], Awaitable[None]]
) -> OpErrors:
    """Run op(i) for every i with at most `concurrency` in flight. A failed op is recorded and
    the others go on (the caller decides how many failures a sample can have)."""
    pending = iter(indexes)
    errors = OpErrors()

    async def client() -> None:
        for index in pending:  # shared iterator: bounded by len(indexes)
            try:
                await op(index)
            except (BenchError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                errors.add(index, exc)

    tasks = [asyncio.create_task(client()) for _ in range(max(1, min(concurrency, len(indexes))))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return errors


async def push_small_blobs(
    session: aiohttp.ClientSession,
    base_url: str,
    name: str,
    blobs: list[bytes],
    digests: list[str],
    concurrency: int,
) -> OpErrors:
    """Push every blob (POST + PUT ?digest= with the body) with `concurrency` clients."""

    async def one(index: int) -> None:
        location = await start_upload(session, base_url, name)
        async with session.put(
            URL(with_digest(location, digests[index]), encoded=True),
            data=blobs[index],
            headers={"Content-Type": "application/octet-stream"},
        ) as resp:
            await _expect(resp, 201, what=f"PUT small blob to {name}")
            await resp.read()

    return await _bounded_pool(list(range(len(blobs))), concurrency, one)


async def pull_small_blobs(
    session: aiohttp.ClientSession,
    base_url: str,
    name: str,
    blobs: list[bytes],
    digests: list[str],
    concurrency: int,
    indexes: list[int] | None = None,
) -> OpErrors:
    """GET every blob (or those of `indexes`) with `concurrency` clients; check the length."""

    async def one(index: int) -> None:
        async with session.get(f"{base_url}/v2/{name}/blobs/{digests[index]}") as resp:
            await _expect(resp, 200, what=f"GET small blob from {name}")
            body = await resp.read()
        if len(body) != len(blobs[index]):
            raise BenchError(f"GET small blob: {len(body)} bytes, not {len(blobs[index])}")

    todo = list(range(len(blobs))) if indexes is None else indexes
    return await _bounded_pool(todo, concurrency, one)


# --------------------------------------------------------------------------- docker image


@dataclass(frozen=True)
class DockerImage:
    """A multi-layer image on disk: layer blobs (gzip tar), a config and an OCI manifest."""

    layers: list[BlobFile]
    config: bytes
    manifest: bytes

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers) + len(self.config)


def make_docker_image(workdir: Path, total_size: int, n_layers: int = 10) -> DockerImage:
    """`n_layers` layers, each a gzip (level 0: stored, random data does not compress) tar of
    one file of random bytes, about total_size / n_layers each; a config; an OCI manifest."""
    workdir.mkdir(parents=True, exist_ok=True)
    per = max(1, total_size // n_layers)
    layers: list[BlobFile] = []
    diff_ids: list[str] = []
    rng = random.Random()
    for index in range(n_layers):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(f"bench/layer{index:02d}.bin")
            info.size = per
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(rng.randbytes(per)))
        tar_bytes = raw.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(tar_bytes).hexdigest())
        gz = gzip.compress(tar_bytes, compresslevel=0, mtime=0)
        del tar_bytes
        digest = "sha256:" + hashlib.sha256(gz).hexdigest()
        path = workdir / f"layer{index:02d}.tar.gz"
        path.write_bytes(gz)
        layers.append(BlobFile(path, len(gz), digest))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"trustyard bench layer {i}"} for i in range(n_layers)],
        },
        separators=(",", ":"),
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": [
                {"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}
                for layer in layers
            ],
        },
        separators=(",", ":"),
    ).encode()
    return DockerImage(layers, config, manifest)


async def push_docker_image(
    session: aiohttp.ClientSession, base_url: str, name: str, tag: str, image: DockerImage
) -> None:
    """Push layers, config and manifest over HTTP (what `docker push` would do)."""
    for layer in image.layers:
        await push_blob_monolithic(session, base_url, name, layer)
    await push_small_blob(session, base_url, name, image.config)
    async with session.put(
        f"{base_url}/v2/{name}/manifests/{tag}",
        data=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    ) as resp:
        await _expect(resp, 201, what=f"PUT manifest {name}:{tag}")
        await resp.read()


# --------------------------------------------------------------------------- misc


def summarize(values: list[float]) -> dict[str, float | None]:
    """Median and min-max of the successful samples."""
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def drop_dirty_pages() -> None:
    """Flush dirty pages so one registry's writes are not paid for during the next run."""
    os.sync()


def make_tempdir(parent: str | None) -> Path:
    """The benchmark's scratch directory."""
    return Path(tempfile.mkdtemp(prefix="trustyard-bench-", dir=parent))


def tool_version(args: list[str], timeout: float = 10) -> str:
    """First line that a `--version` style command prints, or ''."""
    try:
        out = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else ""
