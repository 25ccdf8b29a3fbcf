"""The filesystem blob backend: blobs as files under the data directory, written by rename.

Blocking file I/O runs in a small thread pool so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from registry.grammar import ALGORITHMS, Digest
from storage.blobstore import StoredObject
from storage.layout import DataLayout

T = TypeVar("T")

#: Bytes read from a file per step when a blob is streamed rather than sent with sendfile.
READ_CHUNK = 1 << 20


class FilesystemBlobStore:
    """Blobs in `<data-dir>/blobs`, uploads in `<data-dir>/uploads` (see `storage.layout`)."""

    def __init__(self, layout: DataLayout, *, fsync: bool = True, threads: int = 8) -> None:
        self.layout = layout
        self.fsync = fsync
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fs-blobs")
        layout.create()

    async def _run(self, func: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)

    async def start_upload(self, upload_id: str) -> None:
        """Create an empty upload file."""
        await self._run(self.layout.upload(upload_id).touch, 0o644, False)

    async def upload_size(self, upload_id: str) -> int | None:
        """Size of the upload file, or None if there is none."""
        try:
            return (await self._run(os.stat, self.layout.upload(upload_id))).st_size
        except FileNotFoundError:
            return None

    async def append(self, upload_id: str, data: bytes) -> None:
        """Append to the upload file."""
        await self._run(_append, self.layout.upload(upload_id), data)

    async def read_upload(self, upload_id: str) -> AsyncIterator[bytes]:
        """Stream the upload file."""
        async for chunk in self._read_file(self.layout.upload(upload_id), 0, None):
            yield chunk

    async def commit(self, upload_id: str, digest: Digest) -> None:
        """fsync the upload, then rename it to its content address (atomic on one filesystem)."""
        await self._run(self._commit, self.layout.upload(upload_id), self.layout.blob(digest))

    def _commit(self, source: Path, target: Path) -> None:
        if target.exists():
            # Same digest, same bytes: the blob is already there; keep the existing file, but
            # freshen its age so a concurrent GC does not take it for an orphan.
            os.utime(target)
            source.unlink(missing_ok=True)
            return
        # The rename keeps the upload's mtime; an idle resumed upload would look old to GC.
        os.utime(source)
        if self.fsync:
            with source.open("rb") as handle:
                os.fsync(handle.fileno())
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        if self.fsync:
            _fsync_dir(target.parent)

    async def abort(self, upload_id: str) -> None:
        """Delete the upload file."""
        await self._run(self.layout.upload(upload_id).unlink, True)

    async def size(self, digest: Digest) -> int | None:
        """Size of the blob file, or None."""
        try:
            return (await self._run(os.stat, self.layout.blob(digest))).st_size
        except FileNotFoundError:
            return None

    def local_path(self, digest: Digest) -> Path | None:
        """The blob's file: the server sends it with sendfile."""
        return self.layout.blob(digest)

    async def redirect_url(self, digest: Digest) -> str | None:
        """The filesystem backend never redirects."""
        return None

    async def read(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream a byte range of the blob file."""
        async for chunk in self._read_file(self.layout.blob(digest), start, end):
            yield chunk

    async def _read_file(self, path: Path, start: int, end: int | None) -> AsyncIterator[bytes]:
        handle = await self._run(open, path, "rb")
        try:
            await self._run(handle.seek, start)
            position = start
            while end is None or position < end:
                want = READ_CHUNK if end is None else min(READ_CHUNK, end - position)
                chunk = await self._run(handle.read, want)
                if not chunk:
                    break
                position += len(chunk)
                yield chunk
        finally:
            await self._run(handle.close)

    async def delete(self, digest: Digest) -> None:
        """Delete the blob file."""
        await self._run(self.layout.blob(digest).unlink, True)

    async def delete_blobs(self, digests: list[Digest]) -> None:
        """Delete blob files one by one (a local unlink is cheap)."""
        for digest in digests:
            await self.delete(digest)

    async def list_blobs(self) -> AsyncIterator[StoredObject]:
        """Walk `blobs/<algorithm>/<xx>/<hex>`."""
        for found in await self._run(self._walk_blobs):
            yield found

    def _walk_blobs(self) -> list[StoredObject]:
        found: list[StoredObject] = []
        for algorithm in ALGORITHMS:
            root = self.layout.blobs / algorithm
            if not root.is_dir():
                continue
            for prefix in os.scandir(root):
                if not prefix.is_dir():
                    continue
                for entry in os.scandir(prefix.path):
                    digest = self.layout.digest_of_blob_path(Path(entry.path))
                    if digest is None or not entry.is_file():
                        continue
                    stat = entry.stat()
                    found.append(StoredObject(str(digest), stat.st_size, stat.st_mtime))
        return found

    async def list_uploads(self) -> AsyncIterator[StoredObject]:
        """Every file under `uploads/`."""
        for found in await self._run(self._walk_uploads):
            yield found

    def _walk_uploads(self) -> list[StoredObject]:
        found = []
        for entry in os.scandir(self.layout.uploads):
            if entry.is_file():
                stat = entry.stat()
                found.append(StoredObject(entry.name, stat.st_size, stat.st_mtime))
        return found

    async def close(self) -> None:
        """Stop the thread pool."""
        self._pool.shutdown(wait=True)


def _append(path: Path, data: bytes) -> None:
    # Open per call: an upload may move between requests, processes and restarts.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
