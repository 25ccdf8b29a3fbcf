"""The "limit" column: the least a server can do to serve the same bytes; the disk's write speed.

``python -m bench.limit_server --root DIR --port PORT`` serves, on 127.0.0.1 only, with HTTP/1.1
keep-alive and nothing else:

- ``GET|HEAD /v2/<name>/blobs/sha256:<hex>``: the file ``DIR/blobs/<hex>``, sent with
  ``loop.sendfile`` (``os.sendfile`` on the socket: zero-copy, no hashing, no database);
- ``GET|HEAD /v2/<name>/manifests/<ref>``: the bytes of ``DIR/manifest.json`` (read once);
- ``GET /v2/``: ``{}``; anything else: 404.

One process, one asyncio event loop, no routing framework: what is left is the kernel's loopback
and page cache plus the smallest amount of Python per request. It is not a registry: it does not
check names, digests or ``Accept``; it exists to show how far from the physical limit each
registry is, and that the load generator can drive more than either registry answers.

`disk_write_limit` is the push counterpart: the same bytes written to a new file on the same
disk and ``fsync``-ed, as a registry that keeps its promise of durability has to.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MAX_HEADER = 64 * 1024
MAX_REQUESTS_PER_CONNECTION = 100_000_000  # bounded keep-alive loop


def _head(status: str, length: int, ctype: str, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Length: {length}\r\nContent-Type: {ctype}\r\n"
        f"Docker-Distribution-API-Version: registry/2.0\r\n{extra}\r\n"
    ).encode()


class LimitServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        manifest = root / "manifest.json"
        self.manifest = manifest.read_bytes() if manifest.exists() else b"{}"
        self.manifest_head = _head(
            "200 OK",
            len(self.manifest),
            "application/vnd.oci.image.manifest.v1+json",
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                request_line = raw.split(b"\r\n", 1)[0].decode("latin-1")
                parts = request_line.split(" ")
                if len(parts) != 3:
                    return
                method, path = parts[0], parts[1].split("?", 1)[0]
                head = method == "HEAD"
                if "/manifests/" in path:
                    writer.write(self.manifest_head if head else self.manifest_head + self.manifest)
                elif "/blobs/sha256:" in path:
                    hexdigest = path.rsplit("sha256:", 1)[1]
                    blob = self.root / "blobs" / hexdigest
                    if not hexdigest.isalnum() or not blob.is_file():
                        writer.write(_head("404 Not Found", 0, "text/plain"))
                    else:
                        with blob.open("rb") as f:
                            size = os.fstat(f.fileno()).st_size
                            writer.write(_head("200 OK", size, "application/octet-stream"))
                            if not head:
                                await writer.drain()
                                await loop.sendfile(writer.transport, f, 0, size)
                elif path == "/v2/":
                    writer.write(_head("200 OK", 2, "application/json") + (b"" if head else b"{}"))
                else:
                    writer.write(_head("404 Not Found", 0, "text/plain"))
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()


async def serve(root: Path, port: int, ready_file: Path | None) -> None:
    server = LimitServer(root)
    srv = await asyncio.start_server(
        server.handle, "127.0.0.1", port, limit=MAX_HEADER, backlog=1024, reuse_address=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_file is not None:
        ready_file.write_text(str(srv.sockets[0].getsockname()[1]))
    async with srv:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.limit_server")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, default=None)
    args = parser.parse_args(argv)
    # The default event loop, not uvloop: its loop.sendfile is os.sendfile on the socket.
    asyncio.run(serve(args.root, args.port, args.ready_file))


# --------------------------------------------------------------------------- disk


def _write_fsync(src: Path, dst: Path, chunk: int) -> int:
    written = 0
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with src.open("rb") as f:
            for _ in range(math.ceil(os.fstat(f.fileno()).st_size / chunk) + 1):  # bounded
                data = f.read(chunk)
                if not data:
                    break
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                written += len(data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


def _fsync_dir(path: Path) -> None:
    """fsync a directory, so that the names of the files just written in it are durable too."""
    dirfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def disk_write_limit(src: Path, workdir: Path, chunk: int = 1 << 20) -> float:
    """Seconds to copy `src` into a new file in `workdir` (same disk) and fsync it."""
    dst = workdir / f"limit-{time.monotonic_ns()}.bin"
    os.sync()
    t0 = time.perf_counter()
    try:
        _write_fsync(src, dst, chunk)
        _fsync_dir(workdir)
        return time.perf_counter() - t0
    finally:
        dst.unlink(missing_ok=True)


def small_files_write_limit(blobs: list[bytes], workdir: Path, concurrency: int) -> float:
    """Seconds to write each of `blobs` to its own new file (fsync each) with `concurrency`
    threads: the disk's floor for a registry that stores small blobs durably."""
    target = workdir / f"limit-small-{time.monotonic_ns()}"
    target.mkdir()

    def one(index: int) -> None:
        fd = os.open(target / f"{index}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, blobs[index])
            os.fsync(fd)
        finally:
            os.close(fd)

    os.sync()
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(len(blobs))))
        _fsync_dir(target)
        return time.perf_counter() - t0
    finally:
        for index in range(len(blobs)):
            (target / f"{index}").unlink(missing_ok=True)
        target.rmdir()


if __name__ == "__main__":
    main()
