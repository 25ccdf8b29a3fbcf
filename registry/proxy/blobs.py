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
blob being fetched, are served from the upload's file as it grows (bytes already written and
hashed; the final byte after verification), so they do not wait for the whole blob. A backend
without a local upload file (S3) keeps the last `WINDOW` bytes received in memory instead (the
chunks the first client is handed, not copies), and joiners stream from that window under the
same rules. A joiner that starts, or falls, behind the window (it arrived late, or reads too
slowly) waits for the verified blob and carries on from storage.
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
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from registry.context import RegistryContext
from registry.errors import BLOB_UNKNOWN, TOOMANYREQUESTS, UNAVAILABLE, RegistryError
from registry.handlers.blobs import requested_range
from registry.proxy.client import RateLimited, UpstreamClient, UpstreamError
from registry.proxy.stats import ProxyStats
from storage.blob_commit import commit_blob
from storage.blobstore import BlobStore
from storage.filesystem import FilesystemBlobStore
from storage.metadata import MetadataDB
from storage.oci.digests import Digest

log = logging.getLogger("trustyard.proxy")

#: Bytes hashed and appended to the upload at a time (one thread hop each).
BATCH = 1 << 20
#: Batches waiting for the hash and the disk before the fetch stops reading upstream.
BATCHES_QUEUED = 8
#: Chunks buffered for the streaming client before the fetch waits for it.
QUEUE_CHUNKS = 32
#: Bytes a joining client reads from the upload file at a time.
FOLLOW_READ = 1 << 20
#: A streaming client that takes longer than this to accept a chunk is cut off (the fetch goes
#: on for the others; it may retry and is then served from storage).
SLOW_CLIENT = 60.0
#: Bytes of a fetch kept in memory for joiners, on a backend without an upload file to follow.
WINDOW = 16 << 20
#: Bytes all fetches together keep so; beyond it a fetch keeps only its newest chunk (its
#: joiners then wait for the verified blob).
WINDOWS_TOTAL = 256 << 20

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
    #: The upload's local file, which joiners follow (None until it exists, or on a backend
    #: without one).
    follow: Path | None = None
    #: Whether the upload exists (or the fetch ended before it did).
    opened: bool = False
    #: Bytes appended to the upload and hashed so far.
    written: int = 0
    verified: bool = False
    failure: FetchFailed | None = None
    #: Set (and replaced) at every step above, for the joiners waiting on one.
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    #: Without an upload file: the latest chunks received (at most `WINDOW` bytes but the
    #: newest chunk), for joiners to stream from.
    window: deque[bytes] = field(default_factory=deque)
    window_bytes: int = 0
    #: Bytes received from the upstream so far.
    received: int = 0

    def window_start(self) -> int:
        """The offset of the oldest byte still in the window."""
        return self.received - self.window_bytes

    def keep(self, chunk: bytes, limit: int) -> int:
        """Add a received chunk to the window, forgetting the oldest beyond `limit` bytes (but
        the newest chunk); how much the window grew (negative: shrank)."""
        before = self.window_bytes
        self.window.append(chunk)
        self.window_bytes += len(chunk)
        self.received += len(chunk)
        while len(self.window) > 1 and self.window_bytes - len(self.window[0]) >= limit:
            self.window_bytes -= len(self.window.popleft())
        self.advance()
        return self.window_bytes - before

    def forget(self) -> int:
        """Drop the window (the fetch ended; joiners still behind read from storage); the
        bytes it held."""
        held, self.window_bytes = self.window_bytes, 0
        self.window.clear()
        self.advance()
        return held

    def piece(self, position: int, ready: int) -> memoryview | None:
        """Bytes from `position` up to `ready` (those of one chunk at most) out of the window,
        or None when `position` is no longer in it."""
        if position < self.window_start():
            return None
        end = self.received
        for chunk in reversed(self.window):  # joiners read near the newest end: few steps
            start = end - len(chunk)
            if position >= start:
                begin = position - start
                return memoryview(chunk)[begin : begin + ready - position]
            end = start
        return None

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
        #: Bytes of each fetch kept in memory for joiners (backends without an upload file).
        self.window = WINDOW
        self.windows_total = WINDOWS_TOTAL
        self._kept = 0  # bytes in every fetch's window

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
        """Serve a client that did not start the fetch (or asked for a range) from the upload's
        file as it grows, or, on a backend without one, from storage once the fetch is done."""
        while not fetch.opened:
            await fetch.progress.wait()
        if fetch.failure is not None or fetch.done.done():
            await self._wait(fetch)
            return await handler(request, name, str(digest))
        start, end = requested_range(request, fetch.size)
        if fetch.follow is None:
            return await self._feed(request, fetch, start, end, name, digest, handler)
        try:
            handle = await asyncio.to_thread(os.open, fetch.follow, os.O_RDONLY)
        except FileNotFoundError:  # stored (or dropped) meanwhile: the upload is gone
            await self._wait(fetch)
            return await handler(request, name, str(digest))
        try:
            return await self._follow(request, fetch, handle, start, end, digest)
        finally:
            os.close(handle)

    async def _feed(
        self,
        request: web.Request,
        fetch: _Fetch,
        start: int,
        end: int,
        name: str,
        digest: Digest,
        handler: Handler,
    ) -> web.StreamResponse:
        """Send bytes [start, end) from the fetch's in-memory window as they arrive; behind
        the window, from storage once the blob is verified and stored."""
        response = _range_response(digest, start, end, fetch.size)
        position = start
        while position < end:
            progress = fetch.progress
            if fetch.failure is not None and not fetch.verified:
                return _cut(request, response, digest, fetch.failure)
            ready = _sendable(fetch, fetch.received, end)
            if ready <= position:
                await progress.wait()
                continue
            piece = fetch.piece(position, ready)
            if piece is None:  # arrived late, or fell behind: the verified blob, from storage
                self.stats.count("joiner_waited")
                if not response.prepared:
                    await self._wait(fetch)
                    return await handler(request, name, str(digest))
                try:
                    await asyncio.shield(fetch.done)
                except FetchFailed as exc:
                    return _cut(request, response, digest, exc)
                async for data in self.ctx.store.read(digest, position, end):
                    await response.write(data)
                    position += len(data)
                break
            if not response.prepared:
                await response.prepare(request)
            await response.write(piece)
            position += len(piece)
        if position != end:  # storage held fewer bytes than verified: never end a body early
            return _cut(request, response, digest, FetchFailed("stored blob shorter than read"))
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()
        return response

    async def _follow(
        self,
        request: web.Request,
        fetch: _Fetch,
        handle: int,
        start: int,
        end: int,
        digest: Digest,
    ) -> web.StreamResponse:
        """Send bytes [start, end) of the upload file `handle` as the fetch writes them."""
        response = _range_response(digest, start, end, fetch.size)
        position = start
        while position < end:
            progress = fetch.progress
            if fetch.failure is not None and not fetch.verified:
                return _cut(request, response, digest, fetch.failure)
            ready = _sendable(fetch, fetch.written, end)
            if ready <= position:
                await progress.wait()
                continue
            data = await asyncio.to_thread(
                os.pread, handle, min(ready - position, FOLLOW_READ), position
            )
            if not data:  # shorter than the fetch said: cut rather than end a body early
                log.warning("proxied blob %s: upload file ended at %d bytes", digest, position)
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
        sink: asyncio.Task[None] | None = None
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
                fetch.follow = _upload_file(store, upload_id)
                keep = fetch.follow is None  # joiners stream from memory instead
                fetch.opened = True
                fetch.advance()
                await _publish(fetch, ("start", size))
                hasher = hashlib.new(digest.algorithm)
                batches: asyncio.Queue[list[bytes] | None] = asyncio.Queue(BATCHES_QUEUED)
                stopped: list[BaseException] = []
                sink = asyncio.create_task(self._sink(fetch, batches, hasher, upload_id, stopped))
                batch: list[bytes] = []
                batched = received = 0
                final = b""
                content = response.content
                while True:
                    # Nothing more has arrived: the batch goes to the sink first, so joiners get
                    # every byte that came before the upstream paused.
                    if batch and content.total_bytes == received:
                        await _put(batches, stopped, batch)
                        batch, batched = [], 0
                    chunk, _ = await content.readchunk()  # as received: never joined, no copy
                    if not chunk:
                        if content.at_eof():
                            break
                        continue  # the end of an HTTP chunk
                    received += len(chunk)
                    if received > size:
                        raise FetchFailed(f"upstream sent more than its {size} bytes")
                    if keep:
                        room = self._kept < self.windows_total
                        self._kept += fetch.keep(chunk, self.window if room else 0)
                    if received == size:
                        final = chunk  # the streaming client has it once it is verified
                    else:
                        await _publish(fetch, ("chunk", chunk))
                    batch.append(chunk)
                    batched += len(chunk)
                    if batched >= BATCH:
                        await _put(batches, stopped, batch)
                        batch, batched = [], 0
                if received != size:
                    raise FetchFailed(f"upstream sent {received} of {size} bytes")
                if batch:
                    await _put(batches, stopped, batch)
                await _put(batches, stopped, None)
                await sink
                if stopped:
                    raise stopped[0]
            actual = Digest(digest.algorithm, hasher.hexdigest())
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
            self._kept -= fetch.forget()  # stored: joiners still behind read it from storage
            self.stats.count("blob_fetched")
            self.stats.count_bytes(received)
            fetch.done.set_result(None)
        except BaseException as exc:
            if sink is not None and not sink.done():
                sink.cancel()
                with contextlib.suppress(BaseException):
                    await sink
            failure = _as_failure(exc)
            if not isinstance(exc, FetchFailed | UpstreamError | aiohttp.ClientError):
                if not isinstance(exc, asyncio.CancelledError | TimeoutError):
                    log.exception("proxied blob %s of %s: fetch failed", digest, name)
            else:
                log.warning("proxied blob %s of %s: %s", digest, name, failure.reason)
            self.stats.count("blob_fetch_failed")
            fetch.failure = failure
            fetch.opened = True
            self._kept -= fetch.forget()
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

    async def _sink(
        self,
        fetch: _Fetch,
        batches: asyncio.Queue[list[bytes] | None],
        hasher: Any,
        upload_id: str,
        stopped: list[BaseException],
    ) -> None:
        """Hash and append the fetch's batches in order, off the event loop; each written batch
        is announced to the joiners following the upload file. A failure is kept in `stopped`
        and the rest is drained, so the fetch never waits on a sink that stopped."""
        store = self.ctx.store

        gathered = isinstance(store, FilesystemBlobStore)

        def digest_batch(batch: list[bytes]) -> bytes | None:
            for chunk in batch:  # chunk by chunk: no joined copy to hash
                hasher.update(chunk)
            if gathered:
                return None  # written with one gathered write, unjoined
            return batch[0] if len(batch) == 1 else b"".join(batch)

        while (batch := await batches.get()) is not None:
            if stopped:
                continue
            try:
                data = await asyncio.to_thread(digest_batch, batch)
                if data is None:
                    assert isinstance(store, FilesystemBlobStore)
                    await store.append_chunks(upload_id, batch)
                else:
                    await store.append(upload_id, data)
            except Exception as exc:
                stopped.append(exc)
                continue
            fetch.written += sum(len(chunk) for chunk in batch)
            fetch.advance()


async def _put(
    batches: asyncio.Queue[list[bytes] | None],
    stopped: list[BaseException],
    item: list[bytes] | None,
) -> None:
    """Queue a batch (None: the end) for the sink; raise the sink's failure (a full disk)."""
    if stopped:
        raise stopped[0]
    await batches.put(item)


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


def _upload_file(store: BlobStore, upload_id: str) -> Path | None:
    """The local file an upload grows in, which joining clients can follow (only the
    filesystem backend has one)."""
    if isinstance(store, FilesystemBlobStore):
        return store.upload_file(upload_id)
    return None


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
