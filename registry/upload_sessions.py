"""Blob upload sessions: bytes streamed in, hashed while they are written, committed by digest.

A session is a row in the metadata database plus an append-only upload in the blob store. The
running hash of each session lives in memory, keyed by upload id and offset; when it is missing
(after a restart, or for a session another worker process started) it is rebuilt by reading the
bytes back, so the bytes on storage are always the truth and sessions survive restarts.

Whatever writes or removes a resumable session's bytes holds the session's lock (`upload_key`),
which every worker, replica and `trustyard gc` takes: a request appending or finishing, a
cancellation, the stale-session sweeps. None of them waits for it: a chunk sent while another
request writes the session is refused as out of order (416), a cancellation as one the registry
cannot do now (400, which the spec lets a client ignore), and a sweep leaves the session for its
next round. So nothing removes the bytes a request is writing or committing. (A monolithic
upload's session is the exception: see `_only_writer`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NoReturn

from aiohttp import StreamReader

from registry.errors import RegistryError
from storage.blob_commit import commit_blob
from storage.blobstore import BlobStore
from storage.errors import StorageFull
from storage.metadata import MetadataDB
from storage.metadata.coordination import upload_key
from storage.oci.digests import Digest
from storage.oci.errors import (
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    DIGEST_INVALID,
    RANGE_INVALID,
    SIZE_INVALID,
    ErrorCode,
)
from storage.oci.grammar import UPLOAD_ID_RE, parse_count

log = logging.getLogger(__name__)

#: Bytes gathered from the socket before they are hashed and written in one step.
BATCH = 1 << 20

#: The running hash of every session is sha256: what every client sends. Other algorithms
#: (sha512) are hashed once more from storage at the end.
RUNNING_ALGORITHM = "sha256"


@dataclass
class _Session:
    offset: int
    hasher: hashlib._Hash | None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # A monolithic upload's session: only the request that opened it knows its id.
    private: bool = False


@dataclass(frozen=True)
class _Start:
    """Where a request found its session: the offset and a copy of the running hash there,
    to go back to when the request fails."""

    offset: int
    hasher: hashlib._Hash


@dataclass(frozen=True)
class ContentRange:
    """A parsed `Content-Range: <start>-<end>` header of a chunk (inclusive end)."""

    start: int
    end: int

    @classmethod
    def parse(cls, header: str) -> ContentRange:
        """Parse `start-end`, with an optional `bytes ` prefix and `/total` (`*` or a length)."""
        text = header.strip()
        if text.startswith("bytes "):
            text = text[6:].strip()
        text, slash, total_text = text.partition("/")
        start_text, sep, end_text = text.partition("-")
        start, end = parse_count(start_text), parse_count(end_text)
        if not sep or start is None or end is None:
            raise RegistryError(
                RANGE_INVALID, {"Content-Range": header[:100], "reason": "expected <start>-<end>"}
            )
        if end < start:
            raise RegistryError(
                RANGE_INVALID, {"Content-Range": header[:100], "reason": "end before start"}
            )
        if slash and total_text != "*":
            # A total, when a client sends one, is `*` (unknown) or a length the range fits in:
            # anything else is a header we would be guessing at.
            total = parse_count(total_text)
            if total is None or total <= end:
                raise RegistryError(
                    RANGE_INVALID,
                    {
                        "Content-Range": header[:100],
                        "reason": "total is not * or a length past the end",
                    },
                )
        return cls(start, end)


class UploadSessions:
    """Start, append to, inspect, finish and cancel blob uploads."""

    def __init__(self, db: MetadataDB, store: BlobStore, *, hash_threads: int = 2) -> None:
        self.db = db
        self.store = store
        self._sessions: dict[str, _Session] = {}
        #: Blob bytes written by this process since it started (for metrics).
        self.bytes_received = 0
        self._hash_pool = ThreadPoolExecutor(hash_threads, thread_name_prefix="hash")

    @property
    def in_progress(self) -> int:
        """Upload sessions this process holds a running hash for."""
        return len(self._sessions)

    async def close(self) -> None:
        """Stop the hashing threads."""
        self._hash_pool.shutdown(wait=True)

    async def start(self, repository: str, *, resumable: bool = True) -> str:
        """Open a new session for `repository` and return its id. A session that is not
        `resumable` is finished by the request that opens it (a monolithic POST)."""
        upload_id = uuid.uuid4().hex
        await self.store.start_upload(upload_id, resumable=resumable)
        try:
            await self.db.start_upload(upload_id, repository)
        except StorageFull:
            await self.store.abort(upload_id)
            raise
        self._sessions[upload_id] = _Session(
            0, hashlib.new(RUNNING_ALGORITHM), private=not resumable
        )
        return upload_id

    async def offset(self, repository: str, upload_id: str) -> int:
        """Bytes received so far, or BLOB_UPLOAD_UNKNOWN."""
        await self._check(repository, upload_id)
        size = await self.store.upload_size(upload_id)
        if size is None:
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, {"upload": upload_id})
        return size

    async def append(
        self,
        repository: str,
        upload_id: str,
        body: StreamReader,
        *,
        content_range: ContentRange | None,
        content_length: int | None,
    ) -> int:
        """Append a chunk; return the new offset. Out-of-order chunks answer 416."""
        await self._check(repository, upload_id)
        session = self._session(upload_id)
        async with self._only_writer(repository, upload_id, session), session.lock:
            start = await self._start(upload_id, session)
            try:
                await self._receive(
                    repository,
                    upload_id,
                    session,
                    start.offset,
                    body,
                    content_range,
                    content_length,
                )
                # Still the session's only writer (a PostgreSQL lock goes with its connection),
                # then acknowledged (202 with this offset) only once every byte is durable.
                await self._confirm_writer(upload_id, session)
                await self.store.flush(upload_id)
            except BaseException:
                await self._forget_pending(upload_id, session, start)
                raise
            return session.offset

    async def finish(
        self,
        repository: str,
        upload_id: str,
        digest: Digest,
        body: StreamReader | None,
        *,
        content_range: ContentRange | None = None,
        content_length: int | None = None,
    ) -> int:
        """Take the last chunk (if any; checked against `content_range` as `append` does),
        verify `digest`, commit; return the blob's size.

        On a digest mismatch the session and its bytes are dropped: nothing is kept. Any other
        failure before the commit (a last chunk refused or cut off) leaves the session as this
        request found it.
        """
        await self._check(repository, upload_id)
        session = self._session(upload_id)
        async with self._only_writer(repository, upload_id, session), session.lock:
            start: _Start | None = await self._start(upload_id, session)
            try:
                if body is not None:
                    await self._receive(
                        repository,
                        upload_id,
                        session,
                        start.offset,
                        body,
                        content_range,
                        content_length,
                    )
                if digest.algorithm != RUNNING_ALGORITHM:
                    # Hashed again from storage: only what is durable can be read back.
                    await self.store.flush(upload_id)
                actual = await self._digest(upload_id, session, digest.algorithm)
                if actual != digest:
                    await self._drop(upload_id)
                    raise RegistryError(
                        DIGEST_INVALID,
                        {"expected": str(digest), "actual": str(actual)},
                        message="provided digest did not match uploaded content",
                    )
                size = session.offset
                await self._confirm_writer(upload_id, session)
                # From here the upload's bytes may be a blob's too: never cut back.
                start = None
                try:
                    await commit_blob(self.store, self.db, upload_id, digest, size, repository)
                except StorageFull:
                    await self._drop_after_full_disk(upload_id)
                    raise
            except BaseException:
                await self._forget_pending(upload_id, session, start)
                raise
            await self.db.end_upload(upload_id)
            self._sessions.pop(upload_id, None)
            return size

    @contextlib.asynccontextmanager
    async def _only_writer(
        self, repository: str, upload_id: str, session: _Session
    ) -> AsyncIterator[None]:
        """Hold the session's lock across every process on the database while a request
        appends to or finishes it. Two requests writing one session at once (sent to two
        replicas or workers, or twice to one) would both start at the same offset: the first
        one holds the session, the other is answered at once as an out-of-order chunk (416
        with the session's current `Range`), and neither byte stream is mixed into the other.
        (Not waiting: the second request was sent for an offset the first one is moving.)

        A monolithic upload's session is not locked: only its own request knows its id, so no
        client writes or cancels it, and the lock's round trips (PostgreSQL) would cost every
        small blob pushed in one request. The stale-upload sweeps reach it only once it is
        older than `uploads.stale_after`, one request that long; this process's own cleanup
        skips it even then (`drop_stale`)."""
        if session.private:
            yield
            return
        async with self.db.exclusive(upload_key(upload_id), wait=False) as held:
            if not held:
                await self._refuse_while_written(
                    repository,
                    upload_id,
                    RANGE_INVALID,
                    "continue from its Range once that request is answered",
                )
            yield

    async def _refuse_while_written(
        self, repository: str, upload_id: str, error: ErrorCode, what_now: str
    ) -> NoReturn:
        """Refuse a request on a session another request holds: `error`, with the session's
        Range and `what_now` for the client (BLOB_UPLOAD_UNKNOWN if the session went meanwhile)."""
        size = await self.store.upload_size(upload_id)
        if size is None:
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, {"upload": upload_id})
        raise RegistryError(
            error,
            {"upload": upload_id, "reason": "another request is writing this upload"},
            message=f"another request is writing this upload: {what_now}",
            headers=upload_headers(repository, upload_id, size),
        )

    async def _confirm_writer(self, upload_id: str, session: _Session) -> None:
        """`LockLost` (503) when the session's lock went while this request wrote it."""
        if not session.private:
            await self.db.confirm(upload_key(upload_id))

    async def _start(self, upload_id: str, session: _Session) -> _Start:
        """Where this request finds the session (its running hash rebuilt if need be)."""
        offset = await self._current_offset(upload_id, session)
        assert session.hasher is not None
        return _Start(offset, session.hasher.copy())

    async def _forget_pending(
        self, upload_id: str, session: _Session, start: _Start | None
    ) -> None:
        """After a failed request: the store forgets bytes it did not make durable and, while
        this request still holds the session, the upload is cut back to where the request
        found it (`start`; None once a commit began): a refused or broken chunk leaves
        nothing behind, and the client resumes from the same offset. Unless storage then holds
        exactly the bytes of `start`, the running hash is rebuilt from storage next time."""
        durable = None
        with contextlib.suppress(Exception):
            await self.store.drop_pending(upload_id)
        if start is not None:
            try:
                # Once the lock is lost another request may be appending: nothing is cut then.
                await self._confirm_writer(upload_id, session)
                await self.store.cut_upload(upload_id, start.offset)
            except Exception as exc:  # the request's own failure is what the client hears
                log.warning("upload %s not cut back after a failed request: %s", upload_id, exc)
        with contextlib.suppress(Exception):
            durable = await self.store.upload_size(upload_id)
        if start is not None and durable == start.offset:
            session.offset, session.hasher = start.offset, start.hasher
        elif durable is None or durable != session.offset:
            session.hasher = None
            session.offset = -1

    async def cancel(self, repository: str, upload_id: str) -> None:
        """Drop a session and its bytes (a client's DELETE), under the session's lock. While
        another request appends to or finishes the session, the cancellation is refused at once
        (BLOB_UPLOAD_INVALID, which the spec lets a client ignore): the other request's answer
        stands, and an abandoned session goes with the stale-session sweep."""
        await self._check(repository, upload_id)
        key = upload_key(upload_id)
        async with self.db.exclusive(key, wait=False) as held:
            if not held:
                await self._refuse_while_written(
                    repository,
                    upload_id,
                    BLOB_UPLOAD_INVALID,
                    "it was not cancelled; cancel it once that request is answered",
                )
            # The request that held the lock may have finished (or cancelled) the session.
            await self._check(repository, upload_id)
            await self.db.confirm(key)
            await self._drop(upload_id)

    async def drop_stale(self, upload_id: str) -> bool:
        """Drop a session found stale (the server's cleanup) unless a request holds it right
        now; whether it was dropped (one held is looked at again next round)."""
        session = self._sessions.get(upload_id)
        if session is not None and session.private and session.lock.locked():
            log.info("stale upload %s is being written: kept for now", upload_id)
            return False
        async with self.db.exclusive(upload_key(upload_id), wait=False) as held:
            if not held:
                log.info("stale upload %s is being written: kept for now", upload_id)
                return False
            await self.db.confirm(upload_key(upload_id))
            await self._drop(upload_id)
            return True

    async def _drop(self, upload_id: str) -> None:
        """Drop a session and its bytes; the caller holds the session's lock."""
        self._sessions.pop(upload_id, None)
        await self.store.abort(upload_id)
        await self.db.end_upload(upload_id)

    async def _drop_after_full_disk(self, upload_id: str) -> None:
        """Remove an upload the full disk stopped: its bytes first (that frees the space), then
        its session when the database can still record that."""
        self._sessions.pop(upload_id, None)
        await self.store.abort(upload_id)
        with contextlib.suppress(StorageFull):
            await self.db.end_upload(upload_id)

    async def _receive(
        self,
        repository: str,
        upload_id: str,
        session: _Session,
        offset: int,
        body: StreamReader,
        content_range: ContentRange | None,
        content_length: int | None,
    ) -> None:
        """Stream a chunk in at `offset` (under the session's lock); with a `content_range`,
        416 unless it starts at `offset`, 400 unless the body is exactly as long as it says."""
        if content_range is not None:
            if content_range.start != offset:
                raise RegistryError(
                    RANGE_INVALID,
                    {"expected_start": offset, "got": content_range.start},
                    message="chunk out of order: it must start where the upload ends",
                    headers=upload_headers(repository, upload_id, offset),
                )
            expected = content_range.end - content_range.start + 1
            if content_length is not None and content_length != expected:
                raise RegistryError(
                    SIZE_INVALID,
                    {"Content-Range": expected, "Content-Length": content_length},
                    message="Content-Length does not match Content-Range",
                )
        try:
            received = await self._stream_in(upload_id, session, body)
        except StorageFull:
            await self._drop_after_full_disk(upload_id)
            raise
        if content_range is not None and received != content_range.end - offset + 1:
            raise RegistryError(
                SIZE_INVALID,
                {"expected": content_range.end - offset + 1, "received": received},
                message="chunk shorter or longer than its Content-Range",
            )

    async def _check(self, repository: str, upload_id: str) -> None:
        if UPLOAD_ID_RE.fullmatch(upload_id) is None:
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, {"upload": upload_id[:100]})
        owner = await self.db.upload_repository(upload_id)
        if owner != repository:
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, {"upload": upload_id})

    def _session(self, upload_id: str) -> _Session:
        session = self._sessions.get(upload_id)
        if session is None:
            session = self._sessions[upload_id] = _Session(-1, None)
        return session

    async def _current_offset(self, upload_id: str, session: _Session) -> int:
        """The offset on storage; rebuild the running hash if memory and storage disagree."""
        size = await self.store.upload_size(upload_id)
        if size is None:
            self._sessions.pop(upload_id, None)
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, {"upload": upload_id})
        if session.hasher is None or session.offset != size:
            session.hasher = await self._hash_stream(
                RUNNING_ALGORITHM, self.store.read_upload(upload_id)
            )
            session.offset = size
        return size

    async def _digest(self, upload_id: str, session: _Session, algorithm: str) -> Digest:
        if algorithm == RUNNING_ALGORITHM and session.hasher is not None:
            return Digest(algorithm, session.hasher.copy().hexdigest())
        hasher = await self._hash_stream(algorithm, self.store.read_upload(upload_id))
        return Digest(algorithm, hasher.hexdigest())

    async def _hash_stream(self, algorithm: str, chunks: AsyncIterator[bytes]) -> hashlib._Hash:
        hasher = hashlib.new(algorithm)
        loop = asyncio.get_running_loop()
        async for chunk in chunks:
            await loop.run_in_executor(self._hash_pool, hasher.update, chunk)
        return hasher

    async def _stream_in(self, upload_id: str, session: _Session, body: StreamReader) -> int:
        """Copy the request body to storage in batches, hashing each batch as it is written.

        The next batch is read from the socket while the previous one is hashed and written.
        If anything fails, the in-memory hash is dropped so it is rebuilt from storage.
        """
        loop = asyncio.get_running_loop()
        hasher = session.hasher
        assert hasher is not None
        received = 0
        pending: asyncio.Future[object] | None = None

        async def flush(batch: bytes) -> None:
            await asyncio.gather(
                loop.run_in_executor(self._hash_pool, hasher.update, batch),
                self.store.append(upload_id, batch),
            )
            session.offset += len(batch)
            self.bytes_received += len(batch)

        try:
            buffer = bytearray()
            async for chunk in body.iter_chunked(BATCH):
                buffer += chunk
                received += len(chunk)
                if len(buffer) >= BATCH:
                    if pending is not None:
                        await pending
                    pending = asyncio.ensure_future(flush(bytes(buffer)))
                    buffer.clear()
            if pending is not None:
                await pending
                pending = None
            if buffer:
                await flush(bytes(buffer))
        except BaseException:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            session.hasher = None
            session.offset = -1
            raise
        return received


def upload_location(repository: str, upload_id: str) -> str:
    """The URL path of an upload session."""
    return f"/v2/{repository}/blobs/uploads/{upload_id}"


def range_header(offset: int) -> str:
    """The `Range` header value for `offset` bytes received (inclusive end; `0-0` when empty)."""
    return f"0-{max(offset - 1, 0)}"


def upload_headers(repository: str, upload_id: str, offset: int) -> dict[str, str]:
    """The headers every upload-session response carries."""
    return {
        "Location": upload_location(repository, upload_id),
        "Range": range_header(offset),
        "Docker-Upload-UUID": upload_id,
    }
