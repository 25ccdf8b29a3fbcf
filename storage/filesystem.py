"""The filesystem blob backend: blobs as files under the data directory, written by rename.

Blocking file I/O runs in a small thread pool so the event loop never waits on the disk. A full
disk (`ENOSPC`, `EDQUOT`) becomes `StorageFull`, answered 507 with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from storage.blobstore import StoredObject
from storage.errors import BlobDamaged, StorageFull
from storage.growing import NO_SPACE
from storage.layout import DataLayout
from storage.oci.digests import ALGORITHMS, Digest

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
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise StorageFull("disk") from exc
            raise

    async def _run_whole(self, func: Callable[..., T], *args: object) -> T:
        """As `_run`, but a cancelled caller still waits for the work to end: an append left
        running in its thread would land after the cut that follows a failed request."""
        work = asyncio.ensure_future(self._run(func, *args))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            await asyncio.wait([work])
            raise

    async def start_upload(self, upload_id: str, *, resumable: bool = True) -> None:
        """Create an empty upload file (every upload is resumable here)."""
        await self._run(self.layout.upload(upload_id).touch, 0o644, False)

    async def upload_size(self, upload_id: str) -> int | None:
        """Size of the upload file, or None if there is none."""
        try:
            return (await self._run(os.stat, self.layout.upload(upload_id))).st_size
        except FileNotFoundError:
            return None

    async def append(self, upload_id: str, data: bytes) -> None:
        """Append to the upload file."""
        await self._run_whole(_append, self.layout.upload(upload_id), data)

    async def flush(self, upload_id: str) -> None:
        """Appends are written at once; with `fsync` on, fsync them before the acknowledgement."""
        if self.fsync:
            with contextlib.suppress(FileNotFoundError):
                await self._run(_fsync_file, self.layout.upload(upload_id))

    async def drop_pending(self, upload_id: str) -> None:
        """Nothing is held in memory: what was appended is in the file."""

    async def cut_upload(self, upload_id: str, size: int) -> None:
        """Truncate the upload file to `size` bytes (and fsync that, with `fsync` on: a crash
        must not bring the cut bytes back)."""
        await self._run_whole(_cut, self.layout.upload(upload_id), size, self.fsync)

    def upload_file(self, upload_id: str) -> Path:
        """The file an upload is appended to: a reader may follow it while it grows (it is
        unlinked once the upload is placed or dropped; an open handle keeps reading)."""
        return self.layout.upload(upload_id)

    async def read_upload(self, upload_id: str) -> AsyncIterator[bytes]:
        """Stream the upload file."""
        async for chunk in self._read_file(self.layout.upload(upload_id), 0, None):
            yield chunk

    async def commit(self, upload_id: str, digest: Digest) -> None:
        """Place the upload at its content address, then drop the upload."""
        await self.place(upload_id, digest)
        await self.abort(upload_id)

    async def place(self, upload_id: str, digest: Digest) -> None:
        """fsync the upload, hard-link it and rename the link onto its content address (atomic
        on one filesystem). Whatever file had that name is replaced by these verified bytes, so
        pushing a blob again repairs a damaged file; the upload keeps its own name."""
        await self._run(self._place, upload_id, self.layout.blob(digest))

    def _place(self, upload_id: str, target: Path) -> None:
        source = self.layout.upload(upload_id)
        # A fresh mtime: an idle resumed upload would look old to the orphan sweep.
        os.utime(source)
        if self.fsync:
            with source.open("rb") as handle:
                os.fsync(handle.fileno())
        link = self.layout.placing(upload_id)
        link.unlink(missing_ok=True)
        os.link(source, link)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(link, target)
        if self.fsync:
            _fsync_dir(target.parent)

    async def verify_size(self, digest: Digest, size: int) -> None:
        """One stat; a file missing because a collection is deciding about it is put back."""
        found = await self._run(self._stored_size, digest)
        if found != size:
            raise BlobDamaged(digest, size, found)

    def _stored_size(self, digest: Digest) -> int | None:
        path = self.layout.blob(digest)
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            pass
        # The caller found the blob recorded, so a copy in the trash belongs in service: a
        # collection whose transaction keeps the blob would put it back a moment later anyway.
        with contextlib.suppress(FileNotFoundError, FileExistsError):
            os.link(self.layout.blob_trash(digest), path)
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return None

    async def quarantine(self, digest: Digest) -> None:
        """Move a corrupt blob's file to `quarantine/` (out of service, kept for a look)."""
        await self._run(self._quarantine, digest)

    def _quarantine(self, digest: Digest) -> None:
        target = self.layout.quarantined(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.layout.blob(digest), target)

    async def move_to_trash(self, digests: list[Digest]) -> None:
        """Rename each blob to `<hex>.gc` beside it (missing ones are skipped)."""
        await self._run(self._move_to_trash, digests)

    def _move_to_trash(self, digests: list[Digest]) -> None:
        for digest in digests:
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.layout.blob(digest), self.layout.blob_trash(digest))

    async def restore_from_trash(self, digests: list[Digest]) -> None:
        """Link each trashed blob back unless its name holds a file again, then drop the trash
        copy (a newer placement of the same verified bytes wins; never overwritten)."""
        await self._run(self._restore, digests)

    def _restore(self, digests: list[Digest]) -> None:
        for digest in digests:
            trash = self.layout.blob_trash(digest)
            with contextlib.suppress(FileNotFoundError, FileExistsError):
                os.link(trash, self.layout.blob(digest))
            trash.unlink(missing_ok=True)

    async def empty_trash(self, digests: list[Digest]) -> None:
        """Unlink the trash copies."""
        await self._run(self._empty_trash, digests)

    def _empty_trash(self, digests: list[Digest]) -> None:
        for digest in digests:
            self.layout.blob_trash(digest).unlink(missing_ok=True)

    async def list_trash(self) -> AsyncIterator[Digest]:
        """Every `<hex>.gc` file under `blobs/`."""
        for path in await self._run(self._walk_trash):
            yield path

    def _walk_trash(self) -> list[Digest]:
        found: list[Digest] = []
        for prefix in self._prefix_dirs():
            for entry in os.scandir(prefix):
                digest = self.layout.digest_of_trash_path(Path(entry.path))
                if digest is not None:
                    found.append(digest)
        return found

    def _prefix_dirs(self) -> list[str]:
        dirs: list[str] = []
        for algorithm in ALGORITHMS:
            root = self.layout.blobs / algorithm
            if root.is_dir():
                dirs += [entry.path for entry in os.scandir(root) if entry.is_dir()]
        return dirs

    async def abort(self, upload_id: str) -> None:
        """Delete the upload file (and a placement link a crash left)."""
        await self._run(self.layout.upload(upload_id).unlink, True)
        await self._run(self.layout.placing(upload_id).unlink, True)

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
        """Stream a byte range of the blob file (at most up to `end`)."""
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
        for prefix in self._prefix_dirs():
            for entry in os.scandir(prefix):
                digest = self.layout.digest_of_blob_path(Path(entry.path))
                if digest is None or not entry.is_file():
                    continue
                with contextlib.suppress(FileNotFoundError):
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
                with contextlib.suppress(FileNotFoundError):
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


def _cut(path: Path, size: int, fsync: bool) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        stat = os.fstat(fd)
        # A second link is the blob placed from this upload: its bytes are never cut.
        if stat.st_size > size and stat.st_nlink == 1:
            os.ftruncate(fd, size)
            if fsync:
                os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
