"""Proxied blobs: fetched once from upstream, streamed to the client while they are stored.

One fetch per (repository, digest) runs at a time (single flight), in its own task so that a
client hanging up does not abort it for the others. The bytes go to a blob-store upload and are
hashed as they arrive; the blob becomes visible (`commit_blob`) only once its digest and length
are verified, and any failure (upstream gone mid-body, wrong bytes, a short body) drops the
upload: nothing is stored and the next request fetches again.

The client that started the fetch is streamed the bytes as they come, one chunk behind: the last
chunk is written only after the digest is verified, so a client is never handed a complete body
of wrong bytes (its connection is cut instead). Clients that join a running fetch, and requests
for a byte range, wait for the verified blob and are served from storage like any cached blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from registry.context import RegistryContext
from registry.errors import BLOB_UNKNOWN, UNAVAILABLE, RegistryError
from registry.proxy.client import UpstreamClient, UpstreamError
from registry.proxy.stats import ProxyStats
from storage.blob_commit import commit_blob
from storage.metadata import MetadataDB
from storage.oci.digests import Digest

log = logging.getLogger("trustyard.proxy")

#: Bytes read from upstream at a time.
CHUNK = 1 << 20
#: Chunks buffered for the streaming client before the fetch waits for it.
QUEUE_CHUNKS = 8
#: A streaming client that takes longer than this to accept a chunk is cut off (the fetch goes
#: on for the others; it may retry and is then served from storage).
SLOW_CLIENT = 60.0

Handler = Callable[[web.Request, str, str], Awaitable[web.StreamResponse]]


class FetchFailed(Exception):
    """A blob fetch failed; nothing was stored."""

    def __init__(self, reason: str, *, unknown: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unknown = unknown  # the upstream does not have it (404)


@dataclass
class _Fetch:
    """One running fetch: its task, who streams it, and its outcome."""

    done: asyncio.Future[None]
    size: asyncio.Future[int | None]
    subscriber: asyncio.Queue[tuple[str, Any]] | None = None
    task: asyncio.Task[None] | None = field(default=None)


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
        fetch = _Fetch(done=loop.create_future(), size=loop.create_future())
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
        stream it while it is fetched, or wait for the fetch and serve it from storage."""
        stream = "Range" not in request.headers
        async with self._deciding:
            stored = (name, str(digest)) not in self._running and await self.cached(name, digest)
            if not stored:
                fetch, queue = self._start(client, remote, name, digest, size, stream=stream)
        if stored:  # fetched by another client meanwhile
            return await handler(request, name, str(digest))
        if queue is None:
            await self._wait(fetch)
            return await handler(request, name, str(digest))
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
        kind, value = await queue.get()
        if kind == "error":
            raise _error(value)
        size: int | None = value
        response = web.StreamResponse(
            headers={
                "Docker-Content-Digest": str(digest),
                "Accept-Ranges": "bytes",
                "Cache-Control": "max-age=31536000",
            }
        )
        response.content_type = "application/octet-stream"
        if size is not None:
            response.content_length = size
        await response.prepare(request)
        held = b""
        while True:
            kind, value = await queue.get()
            if kind == "chunk":
                if held:
                    await response.write(held)
                held = value
            elif kind == "done":
                if held:
                    await response.write(held)
                await response.write_eof()
                return response
            else:
                # Cut the connection: the client sees a short body, never wrong bytes whole.
                log.warning("proxied blob %s: %s; connection to the client cut", digest, value)
                if request.transport is not None:
                    request.transport.abort()
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
        try:
            async with await _open(client, remote, digest) as response:
                # The descriptor's size bounds what is read: an upstream cannot fill the disk.
                if response.content_length not in (None, size):
                    raise FetchFailed(
                        f"upstream announced {response.content_length} bytes for blob {digest}, "
                        f"whose descriptor says {size}"
                    )
                await _publish(fetch, ("start", size))
                await store.start_upload(upload_id)
                started = True
                hasher = hashlib.new(digest.algorithm)
                received = 0
                async for chunk in response.content.iter_chunked(CHUNK):
                    received += len(chunk)
                    if received > size:
                        raise FetchFailed(f"upstream sent more than its {size} bytes")
                    # Hashed, stored and handed to the streaming client at once: the client
                    # waits for neither the disk nor the hash (its last chunk waits for both).
                    await asyncio.gather(
                        asyncio.to_thread(hasher.update, chunk),
                        store.append(upload_id, chunk),
                        _publish(fetch, ("chunk", chunk)),
                    )
                if received != size:
                    raise FetchFailed(f"upstream sent {received} of {size} bytes")
            actual = Digest(digest.algorithm, hasher.hexdigest())
            if actual != digest:
                self.stats.count("digest_mismatch")
                raise FetchFailed(f"upstream sent bytes of digest {actual}, not {digest}")
            # Verified: the streaming client may have its last chunk while the blob is made
            # visible (others wait for that).
            await _publish(fetch, ("done", None))
            await commit_blob(store, db, upload_id, digest, received, name)
            started = False
            self.stats.count("blob_fetched")
            self.stats.count_bytes(received)
            fetch.done.set_result(None)
        except BaseException as exc:
            failure = _as_failure(exc)
            if not isinstance(exc, FetchFailed | UpstreamError | aiohttp.ClientError):
                if not isinstance(exc, asyncio.CancelledError | TimeoutError):
                    log.exception("proxied blob %s of %s: fetch failed", digest, name)
            else:
                log.warning("proxied blob %s of %s: %s", digest, name, failure.reason)
            self.stats.count("blob_fetch_failed")
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
    return RegistryError(
        UNAVAILABLE,
        {"reason": failure.reason},
        message=f"could not fetch the blob from upstream: {failure.reason}; nothing was cached",
    )
