"""Proxied blobs: fetched once from upstream, streamed to every client while they are stored.

One fetch per (repository, digest) runs at a time (single flight), in its own task so that a
client hanging up does not abort it for the others. The upstream's bytes go three ways as they
arrive: to the client that started the fetch (straight from memory), and, a batch at a time off
the event loop, into the running hash and onto a blob-store upload. The blob becomes visible
(`commit_blob`: fsync, rename, record) only once its digest and length are verified, and after
the streaming client has its last bytes; any failure (upstream gone mid-body, wrong bytes, a
short body) drops the upload: nothing is stored and the next request fetches again.

Clients are never handed a complete body of wrong bytes: the bytes that complete a blob are
held until the digest is verified, and a failure cuts every streaming connection instead (a
client also checks the digest itself). Clients that join a running fetch, and byte ranges of a
blob being fetched, are served from a local file as it grows (`storage.growing`: bytes already
written and hashed; the final byte after verification), however late they came or slowly they
read, so they never wait for the whole blob and memory stays bounded. On the filesystem backend
that file is the upload's own; on S3, whose multipart parts cannot be read back before the
upload completes, it is an unnamed copy in the data directory, gone when the fetch ends. Should
that copy fail (a full local disk), the fetch goes on and a joiner past its end waits for the
verified blob and carries on from storage.

Each batch of received bytes costs one hop to a worker thread, which hashes it and writes it
with one gathered `writev` to a descriptor held open for the whole fetch (no joined copy, no
path resolved per write).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from registry.context import RegistryContext
from registry.errors import BLOB_UNKNOWN, TOOMANYREQUESTS, UNAVAILABLE, RegistryError
from registry.handlers.blobs import requested_range
from registry.proxy.client import RateLimited, UpstreamClient, UpstreamError
from registry.proxy.stats import ProxyStats
from storage.blob_commit import commit_blob
from storage.errors import StorageFull
from storage.filesystem import FilesystemBlobStore
from storage.growing import GrowingFile
from storage.layout import DataLayout
from storage.metadata import MetadataDB
from storage.oci.digests import Digest

log = logging.getLogger("trustyard.proxy")

#: Bytes hashed and appended to the upload at a time (one thread hop each). 2 MiB batches
#: (4 queued) with a 1 MiB upstream read buffer measured slower cold pulls on the loaded test
#: machine, for a little less CPU (bench/README.md).
BATCH = 1 << 20
#: Batches waiting for the hash and the disk before the fetch stops reading upstream.
BATCHES_QUEUED = 8
#: Chunks buffered for the streaming client before the fetch waits for it.
QUEUE_CHUNKS = 32
#: Bytes a joining client reads from the followed file at a time.
FOLLOW_READ = 1 << 20
#: A streaming client that takes longer than this to accept a chunk is cut off (the fetch goes
#: on for the others; it may retry and is then served from storage).
SLOW_CLIENT = 60.0

Handler = Callable[[web.Request, str, str], Awaitable[web.StreamResponse]]


class FetchFailed(Exception):
    """A blob fetch failed; nothing was stored."""

    def __init__(
        self, reason: str, *, unknown: bool = False, retry_at: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unknown = unknown  # the upstream does not have it (404)
        #: When the upstream asked for a pause (429): the time (`time.time()`) it ends.
        self.retry_at = retry_at

    def retry_after(self) -> int | None:
        """Whole seconds left of the upstream's pause (at least 1), or None without one."""
        if self.retry_at is None:
            return None
        return max(math.ceil(self.retry_at - time.time()), 1)


@dataclass
class _Fetch:
    """One running fetch: its task, who streams it, how far it got, and its outcome."""

    size: int
    done: asyncio.Future[None]  # resolved once the blob is stored (or the fetch failed)
    subscriber: asyncio.Queue[tuple[str, Any]] | None = None
    task: asyncio.Task[None] | None = field(default=None)
    #: The local file joiners read (the upload's, or on S3 a copy), while the fetch runs;
    #: None before it exists, after the fetch ended, or when it could not be made.
    follow: GrowingFile | None = None
    #: The copy for joiners stopped short of the blob (a full local disk, S3 only): a joiner
    #: past its end carries on from storage once the blob is stored.
    follow_lost: bool = False
    #: Whether the upload exists (or the fetch ended before it did).
    opened: bool = False
    #: Bytes hashed and written to the followed file so far.
    written: int = 0
    verified: bool = False
    failure: FetchFailed | None = None
    #: Set (and replaced) at every step above, for the joiners waiting on one.
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def advance(self) -> None:
        """Wake everyone waiting for this fetch to get further."""
        reached, self.progress = self.progress, asyncio.Event()
        reached.set()


class BlobFetcher:
    """Single-flight fetches of proxied blobs into the blob store."""

    def __init__(self, ctx: RegistryContext, stats: ProxyStats) -> None:
        self.ctx = ctx
        self.stats = stats
        self._running: dict[tuple[str, str], _Fetch] = {}
        #: Held to decide "stored, running, or start one": only its holder starts a fetch, and
        #: a fetch links its blob before it leaves `_running`, so no decision sees neither.
        self._deciding = asyncio.Lock()

    async def close(self) -> None:
        """Cancel running fetches (their uploads are dropped)."""
        for fetch in list(self._running.values()):
            if fetch.task is not None:
                fetch.task.cancel()
        for fetch in list(self._running.values()):
            if fetch.task is not None:
                with contextlib.suppress(BaseException):
                    await fetch.task

    async def settled(self) -> None:
        """Wait until no fetch is running (each stored or dropped)."""
        while self._running:
            tasks = [f.task for f in self._running.values() if f.task is not None]
            await asyncio.wait(tasks)

    def running(self, name: str, digest: Digest) -> bool:
        """Whether blob `digest` of `name` is being fetched now."""
        return (name, str(digest)) in self._running

    async def cached(self, name: str, digest: Digest) -> bool:
        """Whether repository `name` can serve blob `digest` from storage now (linking a blob
        stored already when a manifest of `name` references it, which the digest proves)."""
        ctx = self.ctx
        if await ctx.db.blob_in_repository(name, str(digest)) is not None:
            return True
        size = await ctx.db.blob_size(str(digest))
        if size is None or await ctx.store.size(digest) != size:
            return False
        if not await ctx.db.manifests_needing(name, str(digest), "blob", 1):
            return False
        await ctx.db.link_blob(name, str(digest), size)
        return True

    def _start(
        self,
        client: UpstreamClient,
        remote: str,
        name: str,
        digest: Digest,
        size: int,
        *,
        stream: bool,
    ) -> tuple[_Fetch, asyncio.Queue[tuple[str, Any]] | None]:
        """The running fetch of `digest` for `name`, started if there is none; with the queue
        its bytes are streamed to when this call started it and `stream` asks for one."""
        key = (name, str(digest))
        fetch = self._running.get(key)
        if fetch is not None:
            return fetch, None
        loop = asyncio.get_running_loop()
        fetch = _Fetch(size=size, done=loop.create_future())
        queue: asyncio.Queue[tuple[str, Any]] | None = (
            asyncio.Queue(QUEUE_CHUNKS) if stream else None
        )
        fetch.subscriber = queue
        self._running[key] = fetch
        fetch.task = asyncio.create_task(self._run(fetch, client, remote, name, digest, size, key))
        return fetch, queue

    async def ensure(
        self, client: UpstreamClient, remote: str, name: str, digest: Digest, size: int
    ) -> None:
        """Have blob `digest` (of `size` bytes, as its descriptor says) stored for `name`,
        fetching it if needed; FetchFailed if not."""
        async with self._deciding:
            if (name, str(digest)) not in self._running and await self.cached(name, digest):
                return
            fetch, _ = self._start(client, remote, name, digest, size, stream=False)
        await asyncio.shield(fetch.done)

    async def serve(
        self,
        request: web.Request,
        client: UpstreamClient,
        remote: str,
        name: str,
        digest: Digest,
        size: int,
        handler: Handler,
    ) -> web.StreamResponse:
        """Answer a GET of a blob not yet stored (of `size` bytes, as its descriptor says):
        stream it while it is fetched, by this request or by an earlier one."""
        stream = "Range" not in request.headers
        queue = None
        async with self._deciding:
            stored = (name, str(digest)) not in self._running and await self.cached(name, digest)
            if not stored:
                fetch, queue = self._start(client, remote, name, digest, size, stream=stream)
        if stored:  # fetched by another client meanwhile
            return await handler(request, name, str(digest))
        if queue is None:
            return await self._join(request, fetch, name, digest, handler)
        try:
            return await self._stream(request, fetch, queue, digest)
        finally:
            if fetch.subscriber is queue:
                fetch.subscriber = None
                _drain(queue)

    async def _wait(self, fetch: _Fetch) -> None:
        try:
            await asyncio.shield(fetch.done)
        except FetchFailed as exc:
            raise _error(exc) from None

    async def _stream(
        self,
        request: web.Request,
        fetch: _Fetch,
        queue: asyncio.Queue[tuple[str, Any]],
        digest: Digest,
    ) -> web.StreamResponse:
        """Hand the fetch's bytes to the client that started it, as they arrive."""
        kind, value = await queue.get()
        if kind == "error":
            raise _error(value)
        response = _blob_response(digest)
        response.content_length = fetch.size
        await response.prepare(request)
        while True:
            kind, value = await queue.get()
            if kind == "chunk":
                await response.write(value)
            elif kind == "done":
                await response.write_eof()
                return response
            else:
                # Cut the connection: the client sees a short body, never wrong bytes whole.
                log.warning("proxied blob %s: %s; connection to the client cut", digest, value)
                if request.transport is not None:
                    request.transport.abort()
                return response

    async def _join(
        self, request: web.Request, fetch: _Fetch, name: str, digest: Digest, handler: Handler
    ) -> web.StreamResponse:
        """Serve a client that did not start the fetch (or asked for a range) from the followed
        file as it grows; without one, from storage once the fetch is done."""
        while not fetch.opened:
            await fetch.progress.wait()
        if fetch.failure is not None or fetch.done.done():
            await self._wait(fetch)
            return await handler(request, name, str(digest))
        start, end = requested_range(request, fetch.size)
        if fetch.follow is None:  # no local copy could be made: the verified blob, stored
            response = _range_response(digest, start, end, fetch.size)
            return await self._rest_from_storage(request, response, fetch, start, end, digest)
        handle = fetch.follow.reader()  # on the loop's thread, like the writer's close
        try:
            return await self._follow(request, fetch, handle, start, end, digest)
        finally:
            os.close(handle)

    async def _follow(
        self,
        request: web.Request,
        fetch: _Fetch,
        handle: int,
        start: int,
        end: int,
        digest: Digest,
    ) -> web.StreamResponse:
        """Send bytes [start, end) of the followed file `handle` as the fetch writes them."""
        response = _range_response(digest, start, end, fetch.size)
        position = start
        while position < end:
            progress = fetch.progress
            if fetch.failure is not None and not fetch.verified:
                return _cut(request, response, digest, fetch.failure)
            ready = _sendable(fetch, fetch.written, end)
            if ready <= position and fetch.follow_lost:
                return await self._rest_from_storage(
                    request, response, fetch, position, end, digest
                )
            if ready <= position:
                await progress.wait()
                continue
            data = await asyncio.to_thread(
                os.pread, handle, min(ready - position, FOLLOW_READ), position
            )
            if not data:  # shorter than the fetch said: cut rather than end a body early
                log.warning("proxied blob %s: followed file ended at %d bytes", digest, position)
                if request.transport is not None:
                    request.transport.abort()
                return response
            if not response.prepared:
                await response.prepare(request)
            await response.write(data)
            position += len(data)
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()
        return response

    async def _rest_from_storage(
        self,
        request: web.Request,
        response: web.StreamResponse,
        fetch: _Fetch,
        position: int,
        end: int,
        digest: Digest,
    ) -> web.StreamResponse:
        """Send bytes [position, end) from storage once the blob is stored (the local copy
        stopped short of them)."""
        self.stats.count("joiner_waited")
        try:
            await asyncio.shield(fetch.done)
        except FetchFailed as exc:
            return _cut(request, response, digest, exc)
        if not response.prepared:
            await response.prepare(request)
        async for data in self.ctx.store.read(digest, position, end):
            await response.write(data)
            position += len(data)
        if position != end:  # storage held fewer bytes than verified: never end a body early
            return _cut(request, response, digest, FetchFailed("stored blob shorter than read"))
        await response.write_eof()
        return response

    async def _run(
        self,
        fetch: _Fetch,
        client: UpstreamClient,
        remote: str,
        name: str,
        digest: Digest,
        size: int,
        key: tuple[str, str],
    ) -> None:
        store, db = self.ctx.store, self.ctx.db
        upload_id = f"proxy-{uuid.uuid4()}"
        started = False
        sink: _Sink | None = None
        try:
            async with await _open(client, remote, digest) as response:
                # The descriptor's size bounds what is read: an upstream cannot fill the disk.
                if response.content_length not in (None, size):
                    raise FetchFailed(
                        f"upstream announced {response.content_length} bytes for blob {digest}, "
                        f"whose descriptor says {size}"
                    )
                await store.start_upload(upload_id)
                started = True
                fetch.follow = await self._followed_file(upload_id, digest)
                fetch.follow_lost = fetch.follow is None
                fetch.opened = True
                fetch.advance()
                await _publish(fetch, ("start", size))
                sink = _Sink(self.ctx, fetch, upload_id, hashlib.new(digest.algorithm))
                batch: list[bytes] = []
                batched = received = 0
                final = b""
                content = response.content
                while True:
                    # Nothing more has arrived: the batch goes to the sink first, so joiners get
                    # every byte that came before the upstream paused.
                    if batch and content.total_bytes == received:
                        await sink.put(batch)
                        batch, batched = [], 0
                    chunk, _ = await content.readchunk()  # as received: never joined, no copy
                    if not chunk:
                        if content.at_eof():
                            break
                        continue  # the end of an HTTP chunk
                    received += len(chunk)
                    if received > size:
                        raise FetchFailed(f"upstream sent more than its {size} bytes")
                    if received == size:
                        final = chunk  # the streaming client has it once it is verified
                    else:
                        await _publish(fetch, ("chunk", chunk))
                    batch.append(chunk)
                    batched += len(chunk)
                    if batched >= BATCH:
                        await sink.put(batch)
                        batch, batched = [], 0
                if received != size:
                    raise FetchFailed(f"upstream sent {received} of {size} bytes")
                if batch:
                    await sink.put(batch)
                await sink.finish()
            actual = Digest(digest.algorithm, sink.hasher.hexdigest())
            if actual != digest:
                self.stats.count("digest_mismatch")
                raise FetchFailed(f"upstream sent bytes of digest {actual}, not {digest}")
            # Verified: every client may have its last bytes while the blob is made visible
            # (fsync, rename, record); others wait for that.
            fetch.verified = True
            fetch.advance()
            if final:
                await _publish(fetch, ("chunk", final))
            await _publish(fetch, ("done", None))
            await commit_blob(store, db, upload_id, digest, received, name)
            started = False
            _close_follow(fetch)  # stored: joiners reading keep their own descriptors
            self.stats.count("blob_fetched")
            self.stats.count_bytes(received)
            fetch.done.set_result(None)
        except BaseException as exc:
            if sink is not None:
                await sink.stop()
            failure = _as_failure(exc)
            if not isinstance(exc, FetchFailed | UpstreamError | aiohttp.ClientError):
                if not isinstance(exc, asyncio.CancelledError | TimeoutError):
                    log.exception("proxied blob %s of %s: fetch failed", digest, name)
            else:
                log.warning("proxied blob %s of %s: %s", digest, name, failure.reason)
            self.stats.count("blob_fetch_failed")
            fetch.failure = failure
            fetch.opened = True
            _close_follow(fetch)
            fetch.advance()
            if started:
                with contextlib.suppress(Exception):
                    await store.abort(upload_id)
            queue = fetch.subscriber
            if queue is not None:
                _drain(queue)
                queue.put_nowait(("error", failure))
            if not fetch.done.done():
                fetch.done.set_exception(failure)
                fetch.done.exception()  # retrieved: nobody may be waiting
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._running.pop(key, None)
            fetch.advance()

    async def _followed_file(self, upload_id: str, digest: Digest) -> GrowingFile | None:
        """The local file the fetch writes and joiners read: the upload's own on the filesystem
        backend; elsewhere an unnamed copy (None, and joiners wait for the stored blob, when
        the local disk cannot hold one)."""
        store = self.ctx.store
        if isinstance(store, FilesystemBlobStore):
            return await asyncio.to_thread(GrowingFile.append_to, store.upload_file(upload_id))
        try:
            uploads = DataLayout(self.ctx.config.data_dir).uploads
            return await asyncio.to_thread(GrowingFile.unnamed, uploads)
        except OSError as exc:
            log.warning("proxied blob %s: no local copy for joining clients (%s)", digest, exc)
            return None


class _Sink:
    """Hashes a fetch's batches and writes them, in order, off the event loop: one worker-thread
    hop per batch does both (the followed file's `writev` included); on S3 the batch then goes
    to the upload's part buffer. Each batch written is announced to the joiners. A failure is
    kept and raised to the fetch at its next `put`; the rest is skipped, so the fetch never
    waits on a sink that stopped."""

    def __init__(self, ctx: RegistryContext, fetch: _Fetch, upload_id: str, hasher: Any) -> None:
        self.store = ctx.store
        self.fetch = fetch
        self.upload_id = upload_id
        self.hasher = hasher
        #: The followed file, written from the worker thread: on the filesystem backend it is
        #: the upload itself (a failure fails the fetch), elsewhere a copy for joiners only.
        self.file = fetch.follow
        self.is_upload = isinstance(self.store, FilesystemBlobStore)
        self.batches: asyncio.Queue[list[bytes] | None] = asyncio.Queue(BATCHES_QUEUED)
        self.failed: list[BaseException] = []
        #: The worker-thread hop under way: waited for before the file is closed, even when
        #: the sink is cancelled, so no write can reach a descriptor closed (and reused).
        self.hop: asyncio.Future[bool] | None = None
        self.task = asyncio.create_task(self._drain())

    async def put(self, batch: list[bytes]) -> None:
        """Queue a batch; raise the sink's failure (a full disk) instead once it stopped."""
        if self.failed:
            raise self.failed[0]
        await self.batches.put(batch)

    async def finish(self) -> None:
        """Wait for every queued batch; raise the sink's failure, if any."""
        await self.put(None)  # type: ignore[arg-type]  # the end
        await self.task
        if self.failed:
            raise self.failed[0]

    async def stop(self) -> None:
        """Abandon the batches not written yet (the fetch failed), once the hop under way is
        done."""
        if not self.task.done():
            self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task
        if self.hop is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait([self.hop])

    def _absorb(self, batch: list[bytes]) -> bool:
        """In a worker thread: hash the batch, chunk by chunk (no joined copy), and write it to
        the followed file; False when a copy for joiners could not be written."""
        for chunk in batch:
            self.hasher.update(chunk)
        if self.file is None:
            return True
        try:
            # One gathered write per batch, not one per chunk: each call releases the GIL and
            # must take it back from the event loop's thread.
            self.file.append(batch)
        except (OSError, StorageFull):
            if self.is_upload:
                raise
            return False
        return True

    async def _drain(self) -> None:
        fetch = self.fetch
        loop = asyncio.get_running_loop()
        while (batch := await self.batches.get()) is not None:
            if self.failed:
                continue
            try:
                self.hop = loop.run_in_executor(None, self._absorb, batch)
                copied = await asyncio.shield(self.hop)
                if not self.is_upload:
                    await self.store.append(
                        self.upload_id, batch[0] if len(batch) == 1 else b"".join(batch)
                    )
            except Exception as exc:
                self.failed.append(exc)
                continue
            if not copied and not fetch.follow_lost:
                log.warning("proxied blob: the local copy for joining clients stopped (disk)")
                fetch.follow_lost = True
                self.file = None
            if not fetch.follow_lost:
                fetch.written += sum(len(chunk) for chunk in batch)
            fetch.advance()


def _close_follow(fetch: _Fetch) -> None:
    """Close the fetch's writer descriptor of the followed file (joiners keep their own)."""
    if fetch.follow is not None:
        fetch.follow.close()
        fetch.follow = None


def _cut(
    request: web.Request, response: web.StreamResponse, digest: Digest, failure: FetchFailed
) -> web.StreamResponse:
    """End a joiner's answer on a failed fetch: the spec's error before any byte, a cut
    connection after (the client sees a short body, never wrong bytes whole)."""
    if not response.prepared:
        raise _error(failure)
    log.warning("proxied blob %s: %s; connection to a joining client cut", digest, failure.reason)
    if request.transport is not None:
        request.transport.abort()
    return response


def _blob_response(digest: Digest) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Docker-Content-Digest": str(digest),
            "Accept-Ranges": "bytes",
            "Cache-Control": "max-age=31536000",
        }
    )
    response.content_type = "application/octet-stream"
    return response


def _range_response(digest: Digest, start: int, end: int, size: int) -> web.StreamResponse:
    """The answer for bytes [start, end) of a blob of `size` bytes: 206 with its
    Content-Range unless that is the whole blob."""
    response = _blob_response(digest)
    if (start, end) != (0, size):
        response.set_status(206)
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    response.content_length = end - start
    return response


def _sendable(fetch: _Fetch, available: int, end: int) -> int:
    """How far a joiner may send of the `available` bytes: the blob's final byte only once the
    whole blob is verified."""
    return min(available, end if fetch.verified else min(end, fetch.size - 1))


async def _open(client: UpstreamClient, remote: str, digest: Digest) -> aiohttp.ClientResponse:
    response = await client.request("GET", remote, f"blobs/{digest}")
    if response.status == 404:
        response.release()
        raise FetchFailed(f"upstream has no blob {digest} in {remote}", unknown=True)
    if response.status != 200:
        response.release()
        raise FetchFailed(f"upstream answered {response.status} for blob {digest}")
    return response


async def _publish(fetch: _Fetch, item: tuple[str, Any]) -> None:
    """Hand `item` to the streaming client, if any; a client too slow to take it is dropped."""
    queue = fetch.subscriber
    if queue is None:
        return
    if not queue.full():  # the usual case, without a timer per chunk
        queue.put_nowait(item)
        return
    try:
        await asyncio.wait_for(queue.put(item), SLOW_CLIENT)
    except TimeoutError:
        fetch.subscriber = None
        _drain(queue)
        queue.put_nowait(("error", FetchFailed("client too slow")))


async def descriptor_size(db: MetadataDB, name: str, digest: Digest) -> int | None:
    """The size the manifests of `name` give blob `digest` (config or layer), or None when no
    manifest stored there references it."""
    for manifest_digest in await db.manifests_needing(name, str(digest), "blob", 8):
        record = await db.get_manifest(name, manifest_digest)
        if record is None:
            continue
        try:
            document = json.loads(record.content)
        except ValueError:
            continue
        for blob in [document.get("config"), *(document.get("layers") or [])]:
            if isinstance(blob, dict) and blob.get("digest") == str(digest):
                size = blob.get("size")
                if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
                    return size
    return None


def _drain(queue: asyncio.Queue[tuple[str, Any]]) -> None:
    while not queue.empty():
        queue.get_nowait()


def _as_failure(exc: BaseException) -> FetchFailed:
    if isinstance(exc, FetchFailed):
        return exc
    if isinstance(exc, RateLimited):
        return FetchFailed(exc.reason, retry_at=time.time() + exc.retry_after)
    if isinstance(exc, UpstreamError):
        return FetchFailed(exc.reason)
    if isinstance(exc, asyncio.CancelledError):
        return FetchFailed("the fetch was cancelled (shutdown)")
    if isinstance(exc, TimeoutError):
        return FetchFailed("upstream too slow (read timeout)")
    return FetchFailed(f"upstream fetch failed ({type(exc).__name__}: {exc})"[:300])


def _error(failure: FetchFailed) -> RegistryError:
    """The client's answer for a failed fetch (nothing was stored)."""
    if failure.unknown:
        return RegistryError(BLOB_UNKNOWN, {"reason": failure.reason}, message=failure.reason)
    wait = failure.retry_after()
    if wait is not None:
        # As for manifests: the client waits out the upstream's pause instead of retrying now.
        return RegistryError(
            TOOMANYREQUESTS,
            {"reason": failure.reason, "retry_after": wait},
            message=f"the upstream asked for a pause (429) and this blob is not cached: nothing "
            f"is asked of the upstream for {wait}s more; retry then",
            headers={"Retry-After": str(wait)},
        )
    return RegistryError(
        UNAVAILABLE,
        {"reason": failure.reason},
        message=f"could not fetch the blob from upstream: {failure.reason}; nothing was cached",
    )
