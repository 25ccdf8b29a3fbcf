"""The S3 blob backend: blobs as objects in a bucket, each byte sent to S3 once.

Where every key lives is drawn in `storage.layout`. How an upload travels:

* The client's bytes fill a part buffer in memory (`part_size`, at least S3's 5 MiB minimum).
  Each full part goes straight to the multipart upload of the upload's *data object*
  (`_data/<id>/<generation>`), a few parts in flight at once (`upload_parallelism`) while the
  next bytes are read from the client. The buffers of all uploads together stay within
  `upload_memory` (`storage.s3_uploads.UploadMemory`: wait for room, then 429 with the reason).
* At the end of each request (`flush`), the parts sent are waited for, the bytes that do not fill
  a part are written as a small *piece* object (`_uploads/<id>/<start>`), and the upload's
  *state* (`_uploads/<id>/state`: parts with their ETags, pieces) is rewritten. Only then is the
  request answered: every acknowledged byte is in S3, and any process can continue the upload.
  Pieces go into the next part (read back when another process continues); each client byte
  thus crosses to S3 once, plus at most one part's worth per request for the pieces.
* `place` (called only after the digest was verified) sends the buffer as the last part and
  completes the multipart upload: the data object appears whole, at once. The blob's key then
  gets a *pointer*: an empty object whose metadata names the data object and its size. Until
  then nothing exists under `blobs/`. Uploads smaller than one part never start a multipart
  upload: they are one PutObject onto the blob's key, which then holds the bytes itself.
* The running sha256 cannot be saved, and the parts of an unfinished multipart upload cannot be
  read back; a process that continues an upload it did not receive (a restart, another replica)
  completes the multipart upload onto its data object, reads it and the pieces once to rebuild
  the hash, and continues with a new multipart upload (next generation) whose first part is a
  server-side copy of the old data object (`read_upload`).

Why pointers rather than the bytes under the blob's key: a multipart upload's key is fixed when
it starts, before the digest is known (docker and skopeo send it only with the last request),
and moving an object in S3 is a copy of every byte. Garbage collection moves pointers (a copy of
an empty object), and deletes a data object with the last key naming it (`_release`).

boto3 blocks, so every call runs in a bounded thread pool whose size is also botocore's
connection-pool size. Calls have connect and read timeouts and a bounded number of retries: an
unreachable S3 becomes `StorageUnavailable` (503 UNAVAILABLE for the client), logged with the S3
request id when there is one, and never a hang.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from botocore.handlers import add_expect_header

from storage.blobstore import StoredObject
from storage.errors import BlobDamaged, StorageFull, StorageUnavailable
from storage.layout import DataLayout, S3Layout, s3_prefix
from storage.oci.digests import Digest
from storage.oci.errors import BLOB_UPLOAD_INVALID, OciError
from storage.s3_uploads import Part, UploadMemory, UploadState
from storage.settings import APPEND_SLACK, S3Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: S3's largest part number.
MAX_PARTS = 10_000

#: The largest range one UploadPartCopy may copy (S3: 5 GiB).
MAX_COPY_PART = 5 * 1024 * 1024 * 1024

#: Bytes read from S3 per step when a blob or piece is streamed.
READ_CHUNK = 1 << 20

#: Most keys one DeleteObjects request may name.
DELETE_BATCH = 1000

#: User metadata of a pointer (S3 lower-cases the names): the data object's key below the
#: prefix, and its size.
POINTER_DATA = "trustyard-data"
POINTER_SIZE = "trustyard-size"

#: Blobs whose location `read` and `redirect_url` remember from the `verify_size` just before.
LOCATED_CACHE = 4096
LOCATED_FRESH = 10.0

#: The name `list_uploads` gives an incomplete multipart upload no upload owns (a commit that
#: died): `multipart <s3-upload-id> <key>`, which `abort` understands.
MULTIPART_MARK = "multipart "

_MISSING_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchUpload"}


class S3BlobStore:
    """Blobs in an S3 bucket (see the module docstring for how uploads travel)."""

    def __init__(self, settings: S3Settings, layout: DataLayout) -> None:
        self.settings = settings
        self.keys = S3Layout(s3_prefix(settings.prefix))
        self.layout = layout
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            aws_session_token=settings.session_token,
            profile_name=settings.profile,
            region_name=settings.region,
        )
        self.client = _client(session, settings)
        # Bodies of uploads go through a second client that leaves the payload unsigned: each
        # carries its SHA-256 as `x-amz-checksum-sha256` (a signed header) that S3 verifies, so
        # the integrity is a signed payload's, and the hash is taken while the bytes arrive
        # instead of once more, serially, before each request (botocore's signing over http).
        self.data_client = _client(session, settings, payload_signing_enabled=False)
        self._pool = ThreadPoolExecutor(
            max_workers=settings.max_pool_connections, thread_name_prefix="s3"
        )
        self._bucket_ready = False
        #: Keys per listing request (S3 answers at most 1000).
        self.list_page_size = 1000
        #: The part buffers of every upload of this process, together.
        self.memory = UploadMemory(settings.upload_memory, settings.upload_memory_wait)
        self.memory.evict = self._evict_idle
        #: Upload id -> what this process holds of it (see `_Upload`).
        self._uploads: dict[str, _Upload] = {}
        #: Digest -> (key holding its bytes, when that was seen), for `read` after `verify_size`.
        self._located: dict[Digest, tuple[str, float]] = {}
        self._located_lock = threading.Lock()
        self._sse: dict[str, str] = {}
        if settings.server_side_encryption:
            self._sse["ServerSideEncryption"] = settings.server_side_encryption
        if settings.sse_kms_key_id:
            self._sse["SSEKMSKeyId"] = settings.sse_kms_key_id

    # -- plumbing ---------------------------------------------------------------------------

    async def _in_pool(self, func: Callable[..., T], *args: object) -> T:
        """Run blocking work in the pool. A cancelled caller still waits for the work to end:
        a thread cannot be stopped, and a request still in flight after its caller gave up (a
        multipart upload being created, a part being sent) would land after the abort that
        follows and be left behind."""
        work = asyncio.get_running_loop().run_in_executor(self._pool, func, *args)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            await asyncio.wait([work])
            raise

    async def _run(self, operation: str, func: Callable[..., T], *args: object) -> T:
        """Run blocking S3 work in the pool; S3 failures become StorageUnavailable."""
        try:
            if not self._bucket_ready:
                await self._in_pool(self._ensure_bucket)
            return await self._in_pool(func, *args)
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable(operation, exc) from exc

    async def _local(self, func: Callable[..., T], *args: object) -> T:
        """Run blocking local-disk work in the pool."""
        try:
            return await self._in_pool(func, *args)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("disk") from exc
            raise

    def _unavailable(self, operation: str, exc: ClientError | BotoCoreError) -> StorageUnavailable:
        detail: dict[str, object] = {"backend": "s3", "operation": operation}
        if isinstance(exc, ClientError):
            meta = exc.response.get("ResponseMetadata", {})
            error = exc.response.get("Error", {})
            detail["s3_code"] = error.get("Code", "")
            detail["request_id"] = meta.get("RequestId", "")
            log.error(
                "s3 %s failed: %s (HTTP %s, request id %s, host id %s)",
                operation,
                error.get("Code") or exc,
                meta.get("HTTPStatusCode"),
                meta.get("RequestId") or "-",
                meta.get("HostId") or "-",
            )
        else:
            detail["reason"] = type(exc).__name__
            log.error("s3 %s failed: %s (no response, so no request id)", operation, exc)
        return StorageUnavailable(detail)

    def _ensure_bucket(self) -> None:
        """Check the bucket once; create it when it is missing and creation is allowed."""
        bucket = self.settings.bucket
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if not _missing(exc) or not self.settings.create_bucket:
                raise
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if self.settings.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
            try:
                self.client.create_bucket(**kwargs)
                log.info("created bucket %s", bucket)
            except ClientError as create_exc:
                code = create_exc.response.get("Error", {}).get("Code")
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        self._bucket_ready = True

    def _pages(self, method: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator(method).paginate(
            Bucket=self.settings.bucket,
            PaginationConfig={"PageSize": self.list_page_size},
            **kwargs,
        )
        return iter(pages)

    async def _walk(self, operation: str, method: str, **kwargs: Any) -> AsyncIterator[Any]:
        """Every page of a paginated listing, each fetched in the pool."""
        pages = self._pages(method, **kwargs)
        while True:
            page = await self._run(operation, next, pages, None)
            if page is None:
                return
            yield page

    # -- uploads ------------------------------------------------------------------------------

    async def start_upload(self, upload_id: str, *, resumable: bool = True) -> None:
        """Record an empty upload in the bucket (its state object). One that is not
        `resumable` (finished by the request that starts it, whose id no client knows yet) is
        recorded in this process only, until its bytes need a record."""
        if resumable:
            await self._save_state(upload_id, UploadState())
        else:
            self._uploads[upload_id] = _Upload(UploadState(), stored=False)

    async def upload_size(self, upload_id: str) -> int | None:
        """The acknowledged bytes (as the upload's state in the bucket says), or None if the
        upload does not exist. Refreshes this process's idea of the upload: another process may
        have continued it meanwhile."""
        known = self._uploads.get(upload_id)
        if known is not None and not known.stored:
            return known.state.size  # not resumable: nobody else knows it
        state = await self._load_state(upload_id)
        if state is None:
            await self.drop_pending(upload_id)
            return None
        upload = self._uploads.get(upload_id)
        if upload is not None and not upload.active and upload.state != state:
            # Continued elsewhere meanwhile: what this process kept is stale.
            self._drop_cached(upload)
            upload.state = state
        return state.size

    async def append(self, upload_id: str, data: bytes) -> None:
        """Add `data` to the upload's part buffer; every full part is sent to the multipart
        upload of the data object (a few at once while more bytes arrive). Durable only after
        `flush`."""
        upload = await self._activate(upload_id)
        if upload.state.data_size is not None:
            # Completed for a commit that did not finish, and now receiving bytes again.
            await self._rebase(upload_id, upload.state)
        assert upload.buffer is not None
        part_size = self.settings.part_size
        rest = memoryview(data)
        while rest:
            take, rest = (
                rest[: part_size - len(upload.buffer)],
                rest[part_size - len(upload.buffer) :],
            )
            await self._hash_part(upload, take)
            upload.buffer += take
            if len(upload.buffer) >= part_size:
                body = bytes(upload.buffer)
                upload.buffer.clear()
                upload.buffer_start += len(body)
                await self._send_part(upload_id, upload, body, upload.take_checksum())

    async def flush(self, upload_id: str) -> None:
        """Make every appended byte durable, then record them in the upload's state: parts sent
        and answered, the bytes that do not fill a part yet as a new piece, then the state. Only
        after that may the request that brought the bytes be acknowledged."""
        upload = self._uploads.get(upload_id)
        if upload is None or not upload.active:
            return
        try:
            await self._settle(upload)
            state = upload.state
            new = UploadState(
                generation=state.generation,
                multipart=state.multipart,
                parts=state.parts + upload.sent,
                pieces=list(state.pieces),
            )
            parts_end = new.parts_end
            assert parts_end == upload.buffer_start
            assert upload.buffer is not None
            durable = max(parts_end, state.size)
            fresh = bytes(upload.buffer[durable - parts_end :])
            if fresh:
                await self._run(
                    "flush", self._put, self.keys.piece(upload_id, durable), fresh, None
                )
                new.pieces.append((durable, len(fresh)))
            kept = [(start, size) for start, size in new.pieces if start + size > parts_end]
            dropped = [start for start, size in new.pieces if start + size <= parts_end]
            new.pieces = kept
            if new != state:
                await self._save_state(upload_id, new)
            upload.state, upload.sent = new, []
        except BaseException:
            await self.drop_pending(upload_id)
            raise
        self._deactivate(upload, keep=True)
        # Longest idle first for `_evict_idle`.
        self._uploads[upload_id] = self._uploads.pop(upload_id)
        if dropped:
            # Bytes the parts now hold; a leftover is removed with the upload.
            with contextlib.suppress(StorageUnavailable):
                await self._run(
                    "flush", self._delete_keys, [self.keys.piece(upload_id, s) for s in dropped]
                )

    async def drop_pending(self, upload_id: str) -> None:
        """Forget what this process holds of an upload beyond its state (bytes appended since
        the last flush, parts still being sent) and give back its memory."""
        upload = self._uploads.pop(upload_id, None)
        if upload is None:
            return
        for task in upload.sending:
            task.cancel()
        await asyncio.gather(*upload.sending, return_exceptions=True)
        upload.sending.clear()
        self._deactivate(upload)

    async def cut_upload(self, upload_id: str, size: int) -> None:
        """Nothing to cut: a request's bytes enter the upload's state only at its `flush`, just
        before it is acknowledged, and `drop_pending` forgot the rest (a part sent meanwhile is
        replaced under its number by the next request, or, in a multipart upload the state
        never recorded, left to the stale-upload sweep)."""

    async def read_upload(self, upload_id: str) -> AsyncIterator[bytes]:
        """The acknowledged bytes, in order (to rebuild the running hash after a restart or on
        another process). The parts of an unfinished multipart upload cannot be read back, so
        its multipart upload is first completed onto its data object, read, and then continued
        as a new multipart upload whose first part is a server-side copy of it (a cost paid once
        per resumed upload)."""
        state = await self._load_state(upload_id)
        if state is None:
            return
        parts_end = state.parts_end
        if parts_end:
            key = await self._readable_data(upload_id, state)
            async for chunk in self._get("read_upload", key, 0, parts_end):
                yield chunk
        async for chunk in self._read_pieces(upload_id, state):
            yield chunk
        if parts_end and state.data_size is None:
            await self._rebase(upload_id, state)

    async def commit(self, upload_id: str, digest: Digest) -> None:
        """Place the verified upload, then drop the upload."""
        await self.place(upload_id, digest)
        await self.abort(upload_id)

    async def place(self, upload_id: str, digest: Digest) -> None:
        """Make the verified upload blob `digest`: a small upload (no part sent) is written to the
        blob's key in one PutObject; a larger one completes its multipart upload (the part
        buffer sent as the last part) and the blob's key gets a pointer to that data object.
        A blob already stored whole is left as it is; a missing or damaged one is replaced. The
        upload keeps its bytes until `abort`, so placing again after a collection took the
        blob works."""
        upload = await self._activate(upload_id)
        await self._settle(upload)
        state = upload.state
        if state.data_size is None and not state.parts and not upload.sent:
            assert upload.buffer is not None
            # The same verified bytes over whatever is there (a repair if it was damaged).
            data, checksum = bytes(upload.buffer), upload.checksum()
            await self._run("commit", self._put, self.keys.blob(digest), data, None, checksum)
            return
        if state.data_size is None:
            assert upload.buffer is not None
            if upload.buffer:
                body = bytes(upload.buffer)
                upload.buffer.clear()
                upload.buffer_start += len(body)
                checksum = upload.take_checksum()
                await self._send_part(upload_id, upload, body, checksum, last=True)
                await self._settle(upload)
            parts = state.parts + upload.sent
            key = self.keys.upload_data(upload_id, state.generation)
            assert state.multipart is not None
            await self._run("commit", self._complete, key, state.multipart, parts)
            upload.sent = []
            state = dataclasses.replace(
                state, data_size=sum(part.size for part in parts), digest=str(digest)
            )
            await self._save_state(upload_id, state)
            upload.state = state
        if state.digest != str(digest):
            raise RuntimeError(f"upload {upload_id} was completed for {state.digest}")
        assert state.data_size is not None
        if await self._run("commit", self._blob_size, digest) == state.data_size:
            return
        if not state.placed:
            state = dataclasses.replace(state, placed=True)
            await self._save_state(upload_id, state)
            upload.state = state
        data_key = self.keys.upload_data(upload_id, state.generation)
        await self._run(
            "commit", self._put_pointer, self.keys.blob(digest), data_key, state.data_size
        )

    async def abort(self, upload_id: str) -> None:
        """Delete an upload: its multipart uploads, pieces and data objects (but not a data
        object a blob pointer names), its state last. Also an incomplete multipart upload by
        name (as `list_uploads` reports one no upload owns)."""
        if upload_id.startswith(MULTIPART_MARK):
            multipart_id, _, key = upload_id[len(MULTIPART_MARK) :].partition(" ")
            await self._run("abort_multipart", self._abort_multipart, key, multipart_id)
            return
        known = self._uploads.get(upload_id)
        await self.drop_pending(upload_id)
        if known is not None:
            # This process holds the upload's recorded state (refreshed at the start of each
            # request): delete what it names in one request. Leftovers of requests that failed
            # (a piece or a multipart upload never recorded) are found by `list_uploads` under
            # the upload's prefixes and removed by the stale-upload sweep.
            await self._run("abort", self._abort_known, upload_id, known.state, known.stored)
            return
        state = await self._load_state(upload_id)
        keep = (
            self.keys.upload_data(upload_id, state.generation)
            if state is not None and state.placed
            else None
        )
        await self._run("abort", self._abort_upload, upload_id, keep)
        await self._local(shutil.rmtree, self.layout.spool(upload_id), True)

    def _abort_known(self, upload_id: str, state: UploadState, stored: bool) -> None:
        if state.multipart is not None and state.data_size is None:
            self._abort_multipart(
                self.keys.upload_data(upload_id, state.generation), state.multipart
            )
        doomed = [self.keys.piece(upload_id, start) for start, _ in state.pieces]
        if state.data_size is not None and not state.placed:
            doomed.append(self.keys.upload_data(upload_id, state.generation))
        if stored:
            doomed.append(self.keys.upload_state(upload_id))
        self._delete_keys(doomed)

    def _abort_upload(self, upload_id: str, keep: str | None) -> None:
        for page in self._pages(
            "list_multipart_uploads", Prefix=self.keys.upload_data_prefix(upload_id)
        ):
            for item in page.get("Uploads", []):
                self._abort_multipart(item["Key"], item["UploadId"])
        doomed = []
        for prefix in (self.keys.upload_data_prefix(upload_id), self.keys.upload(upload_id)):
            for page in self._pages("list_objects_v2", Prefix=prefix):
                doomed += [item["Key"] for item in page.get("Contents", [])]
        state = self.keys.upload_state(upload_id)
        # The state last: until it is gone, the upload is listed and its leftovers found.
        self._delete_keys([key for key in doomed if key not in (keep, state)])
        self._delete_keys([state])

    # -- the upload machinery -----------------------------------------------------------------

    async def _load_state(self, upload_id: str) -> UploadState | None:
        raw = await self._run("upload_state", self._get_small, self.keys.upload_state(upload_id))
        if raw is None:
            return None
        try:
            return UploadState.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageUnavailable(
                {"backend": "s3", "operation": "upload_state", "reason": f"unreadable: {exc}"}
            ) from exc

    async def _save_state(self, upload_id: str, state: UploadState) -> None:
        await self._run(
            "upload_state", self._put, self.keys.upload_state(upload_id), state.to_json(), None
        )
        upload = self._uploads.get(upload_id)
        if upload is not None:
            upload.stored = True

    async def _activate(self, upload_id: str) -> _Upload:
        """This process's writer for the upload, with its part buffer filled (from the bytes
        kept since its last request here, else from the pieces) and memory reserved for it
        (waiting for room, or refused: see UploadMemory)."""
        upload = self._uploads.get(upload_id)
        if upload is not None and upload.active:
            return upload
        if upload is None:
            state = await self._load_state(upload_id)
            if state is None:
                raise FileNotFoundError(f"no upload {upload_id}")
            upload = self._uploads[upload_id] = _Upload(state)
        state = upload.state
        holders = sum(1 for other in self._uploads.values() if other.active)
        upload.pinned = True
        try:
            await self.memory.acquire(self._slot, holders)
        finally:
            upload.pinned = False
        upload.held = self._slot
        cached, upload.cached = upload.cached, None
        if upload.cached_held:
            self.memory.release(upload.cached_held)
            upload.cached_held = 0
        try:
            if cached is not None and len(cached) == state.size - state.parts_end:
                upload.buffer = cached
            else:
                upload.buffer = bytearray()
                async for chunk in self._read_pieces(upload_id, state):
                    upload.buffer += chunk
            upload.buffer_start = state.parts_end
            upload.part_hash = hashlib.sha256()
            await self._hash_part(upload, upload.buffer)
        except BaseException:
            await self.drop_pending(upload_id)
            raise
        return upload

    def _deactivate(self, upload: _Upload, *, keep: bool = False) -> None:
        """Give back the part buffer's memory. With `keep` (after a flush), the bytes of the
        unfinished part stay while memory allows (the next request need not read the pieces
        back); `_evict_idle` drops them when another upload needs the room."""
        buffer, upload.buffer = upload.buffer, None
        if upload.held:
            self.memory.release(upload.held)
            upload.held = 0
        self._drop_cached(upload)
        if keep and buffer and self.memory.try_acquire(len(buffer)):
            upload.cached, upload.cached_held = buffer, len(buffer)

    def _drop_cached(self, upload: _Upload) -> None:
        upload.cached = None
        if upload.cached_held:
            self.memory.release(upload.cached_held)
            upload.cached_held = 0

    def _evict_idle(self, wanted: int) -> None:
        """Drop kept bytes of idle uploads (longest idle first) until `wanted` bytes are free."""
        for upload in list(self._uploads.values()):
            if self.memory.capacity - self.memory.used >= wanted:
                return
            if upload.cached is not None and not upload.pinned:
                self._drop_cached(upload)

    @property
    def _slot(self) -> int:
        """Memory for one part buffer: a part and the batch that overfills it."""
        return self.settings.part_size + APPEND_SLACK

    async def _send_part(
        self, upload_id: str, upload: _Upload, body: bytes, checksum: str, *, last: bool = False
    ) -> None:
        """Send a part; while memory allows and fewer than `upload_parallelism` are in flight,
        in the background (so the client's next bytes are read meanwhile), else now."""
        state = upload.state
        number = len(state.parts) + len(upload.sent) + len(upload.sending) + 1
        if number > MAX_PARTS:
            raise OciError(
                BLOB_UPLOAD_INVALID,
                {"reason": f"larger than {MAX_PARTS} parts of {self.settings.part_size} bytes"},
                message=f"blob too large for storage.s3.part_size {self.settings.part_size}",
            )
        if state.multipart is None:
            key = self.keys.upload_data(upload_id, state.generation)
            creating = asyncio.ensure_future(self._run("upload_part", self._create_multipart, key))
            try:
                state.multipart = await asyncio.shield(creating)
            except asyncio.CancelledError:
                # Created anyway: remember it so that the abort which follows deletes it.
                with contextlib.suppress(BaseException):
                    state.multipart = await creating
                raise
        key = self.keys.upload_data(upload_id, state.generation)
        multipart = state.multipart
        while not last:
            if len(upload.sending) < self.settings.upload_parallelism and self.memory.try_acquire(
                self._slot
            ):
                upload.sending.append(
                    asyncio.ensure_future(self._held_part(key, multipart, number, body, checksum))
                )
                return
            if not upload.sending:
                break
            await self._settle_one(upload)
        upload.sent.append(
            await self._run(
                "upload_part", self._upload_part, key, multipart, number, body, checksum
            )
        )

    async def _held_part(
        self, key: str, multipart: str, number: int, body: bytes, checksum: str
    ) -> Part:
        try:
            return await self._run(
                "upload_part", self._upload_part, key, multipart, number, body, checksum
            )
        finally:
            self.memory.release(self._slot)

    async def _hash_part(self, upload: _Upload, data: memoryview | bytearray) -> None:
        """Add bytes to the SHA-256 of the part they will be sent in (in a thread: hashlib lets
        go of the GIL, so this runs beside the blob's own running hash)."""
        if data:
            await self._in_pool(upload.part_hash.update, data)

    async def _settle_one(self, upload: _Upload) -> None:
        task = upload.sending.pop(0)
        upload.sent.append(await task)

    async def _settle(self, upload: _Upload) -> None:
        """Wait for every part in flight, in order."""
        while upload.sending:
            await self._settle_one(upload)

    async def _read_pieces(self, upload_id: str, state: UploadState) -> AsyncIterator[bytes]:
        """The acknowledged bytes after the parts, from the pieces."""
        position = state.parts_end
        for start, size in state.pieces:
            if start + size <= position:
                continue
            if start > position:
                raise StorageUnavailable(
                    {"backend": "s3", "operation": "read_upload", "reason": "gap in pieces"}
                )
            key = self.keys.piece(upload_id, start)
            async for chunk in self._get("read_upload", key, position - start, size):
                position += len(chunk)
                yield chunk

    async def _readable_data(self, upload_id: str, state: UploadState) -> str:
        """The key of a complete object holding at least the parts' bytes: the multipart upload
        completed (or found completed by an earlier attempt that stopped half way)."""
        key = self.keys.upload_data(upload_id, state.generation)
        if state.data_size is None:
            assert state.multipart is not None
            try:
                await self._run("read_upload", self._complete, key, state.multipart, state.parts)
            except StorageUnavailable:
                found = await self._run("read_upload", self._head_size, key)
                if found is None or found < state.parts_end:
                    raise
        return key

    async def _rebase(self, upload_id: str, state: UploadState) -> None:
        """Continue an upload whose data object was completed: a new multipart upload (next
        generation) starts with a server-side copy of the acknowledged parts' bytes."""
        source = self.keys.upload_data(upload_id, state.generation)
        generation = state.generation + 1
        key = self.keys.upload_data(upload_id, generation)
        multipart = await self._run("resume", self._create_multipart, key)
        parts_end = state.parts_end
        count = -(-parts_end // MAX_COPY_PART)
        bounds = [parts_end * i // count for i in range(count + 1)]
        copies = await asyncio.gather(
            *(
                self._run(
                    "resume",
                    self._copy_part,
                    key,
                    multipart,
                    number,
                    source,
                    bounds[number - 1],
                    bounds[number],
                )
                for number in range(1, count + 1)
            )
        )
        new = UploadState(
            generation=generation, multipart=multipart, parts=list(copies), pieces=state.pieces
        )
        await self._save_state(upload_id, new)
        upload = self._uploads.get(upload_id)
        if upload is not None:
            upload.state = new
        if not state.placed:
            with contextlib.suppress(StorageUnavailable):
                await self._run("resume", self._delete_keys, [source])

    # Blocking S3 calls (run in the pool by `_run`).

    def _put(
        self, key: str, body: bytes, metadata: dict[str, str] | None, checksum: str | None = None
    ) -> None:
        extra: dict[str, Any] = dict(self._sse)
        if metadata:
            extra["Metadata"] = metadata
        self.data_client.put_object(
            Bucket=self.settings.bucket,
            Key=key,
            Body=body,
            ChecksumSHA256=checksum or _sha256_b64(body),
            **extra,
        )

    def _put_pointer(self, key: str, data_key: str, size: int) -> None:
        relative = data_key[len(self.keys.prefix) :]
        self._put(key, b"", {POINTER_DATA: relative, POINTER_SIZE: str(size)})

    def _get_small(self, key: str) -> bytes | None:
        try:
            answer = self.client.get_object(Bucket=self.settings.bucket, Key=key)
            return bytes(answer["Body"].read())
        except ClientError as exc:
            if _missing(exc):
                return None
            raise

    def _create_multipart(self, key: str) -> str:
        answer = self.client.create_multipart_upload(
            Bucket=self.settings.bucket, Key=key, ChecksumAlgorithm="SHA256", **self._sse
        )
        return str(answer["UploadId"])

    def _upload_part(
        self, key: str, multipart: str, number: int, body: bytes, checksum: str
    ) -> Part:
        answer = self.data_client.upload_part(
            Bucket=self.settings.bucket,
            Key=key,
            UploadId=multipart,
            PartNumber=number,
            Body=body,
            ChecksumSHA256=checksum,
        )
        return Part(str(answer["ETag"]), len(body), checksum)

    def _copy_part(
        self, key: str, multipart: str, number: int, source: str, start: int, end: int
    ) -> Part:
        answer = self.client.upload_part_copy(
            Bucket=self.settings.bucket,
            Key=key,
            UploadId=multipart,
            PartNumber=number,
            CopySource={"Bucket": self.settings.bucket, "Key": source},
            CopySourceRange=f"bytes={start}-{end - 1}",
        )
        result = answer["CopyPartResult"]
        return Part(str(result["ETag"]), end - start, result.get("ChecksumSHA256"))

    def _complete(self, key: str, multipart: str, parts: list[Part]) -> None:
        self.client.complete_multipart_upload(
            Bucket=self.settings.bucket,
            Key=key,
            UploadId=multipart,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": number, "ETag": part.etag}
                    | ({"ChecksumSHA256": part.checksum} if part.checksum else {})
                    for number, part in enumerate(parts, 1)
                ]
            },
        )

    def _abort_multipart(self, key: str, multipart_id: str) -> None:
        try:
            self.client.abort_multipart_upload(
                Bucket=self.settings.bucket, Key=key, UploadId=multipart_id
            )
        except ClientError as exc:
            if not _missing(exc):
                raise

    def _delete_keys(self, keys: list[str]) -> None:
        """DeleteObjects in batches of at most 1000 keys."""
        for first in range(0, len(keys), DELETE_BATCH):
            batch = keys[first : first + DELETE_BATCH]
            answer = self.client.delete_objects(
                Bucket=self.settings.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            errors = answer.get("Errors") or []
            if errors:
                raise ClientError(
                    {"Error": errors[0], "ResponseMetadata": answer.get("ResponseMetadata", {})},
                    "DeleteObjects",
                )

    # -- blobs --------------------------------------------------------------------------------

    async def size(self, digest: Digest) -> int | None:
        """The blob's size (a pointer's data object's), or None if it is not stored whole."""
        return await self._run("size", self._blob_size, digest)

    def _blob_size(self, digest: Digest) -> int | None:
        located = self._locate(digest)
        return None if located is None else located[1]

    def _locate(self, digest: Digest) -> tuple[str, int] | None:
        """(key holding the bytes, size) of a blob: HEAD its key and, for a pointer, HEAD the
        data object it names. None when either is missing."""
        found = self._head(self.keys.blob(digest))
        if found is None:
            return None
        data_key = self._pointer_target(found)
        if data_key is None:
            located = (self.keys.blob(digest), int(found["ContentLength"]))
        else:
            size = self._head_size(data_key)
            if size is None:
                return None
            located = (data_key, size)
        with self._located_lock:
            self._located[digest] = (located[0], time.monotonic())
            while len(self._located) > LOCATED_CACHE:
                self._located.pop(next(iter(self._located)))
        return located

    def _pointer_target(self, head: dict[str, Any]) -> str | None:
        """The data key a pointer names, or None for an object that holds the blob itself."""
        relative = (head.get("Metadata") or {}).get(POINTER_DATA)
        return None if relative is None else f"{self.keys.prefix}{relative}"

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self.settings.bucket, Key=key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise

    def _head_size(self, key: str) -> int | None:
        found = self._head(key)
        return None if found is None else int(found["ContentLength"])

    def _data_key(self, digest: Digest) -> str:
        """Where the blob's bytes were found a moment ago (by `verify_size`), else now."""
        with self._located_lock:
            cached = self._located.get(digest)
        if cached is not None and time.monotonic() - cached[1] < LOCATED_FRESH:
            return cached[0]
        located = self._locate(digest)
        return self.keys.blob(digest) if located is None else located[0]

    def local_path(self, digest: Digest) -> Path | None:
        """S3 blobs have no local file."""
        return None

    async def verify_size(self, digest: Digest, size: int) -> None:
        """A HEAD of the blob's key (and of its data object for a pointer): small beside the
        transfer it guards."""
        found = await self.size(digest)
        if found != size:
            raise BlobDamaged(digest, size, found)

    async def quarantine(self, digest: Digest) -> None:
        """Copy a corrupt blob (or its pointer) to `_quarantine/`, then delete its key."""
        await self._run("fsck", self._quarantine, digest)

    def _quarantine(self, digest: Digest) -> None:
        if self._head(self.keys.blob(digest)) is None:
            return
        self._managed_copy(self.keys.blob(digest), self.keys.quarantined(digest))
        self._delete_keys([self.keys.blob(digest)])

    async def move_to_trash(self, digests: list[Digest]) -> None:
        """Copy each blob's object (for a large blob: its small pointer) to its trash key,
        then delete the blob's key."""
        await self._run("gc", self._move_to_trash, digests)

    def _move_to_trash(self, digests: list[Digest]) -> None:
        moved = []
        for digest in digests:
            if self._head(self.keys.blob(digest)) is None:
                continue
            self._managed_copy(self.keys.blob(digest), self.keys.blob_trash(digest))
            moved.append(self.keys.blob(digest))
        self._delete_keys(moved)

    def _managed_copy(self, source: str, key: str) -> None:
        # boto3's managed copy: one CopyObject (metadata copied), or a multipart copy above 5 GB.
        self.client.copy(
            {"Bucket": self.settings.bucket, "Key": source},
            self.settings.bucket,
            key,
            ExtraArgs=dict(self._sse) or None,
        )

    async def restore_from_trash(self, digests: list[Digest]) -> None:
        """Copy each trashed blob back unless its key holds an object again; drop the trash."""
        await self._run("gc", self._restore, digests)

    def _restore(self, digests: list[Digest]) -> None:
        for digest in digests:
            trash = self.keys.blob_trash(digest)
            missing = self._head(self.keys.blob(digest)) is None
            if missing and self._head(trash) is not None:
                self._managed_copy(trash, self.keys.blob(digest))
        self._release([(digest, self.keys.blob_trash(digest)) for digest in digests])

    async def empty_trash(self, digests: list[Digest]) -> None:
        """Delete the trash keys (and the data objects only they named)."""
        await self._run(
            "gc", self._release, [(digest, self.keys.blob_trash(digest)) for digest in digests]
        )

    def _release(self, doomed: list[tuple[Digest, str]]) -> None:
        """Delete the objects at these keys of these blobs (in batches); for a pointer, also
        the data object it names, unless another key of the blob names it too or its upload
        is still open (an uploader between placing and finishing may place it again)."""
        heads = [(digest, key, self._head(key)) for digest, key in doomed]
        self._delete_keys([key for _, key, head in heads if head is not None])
        data_keys = []
        for digest, key, head in heads:
            data_key = None if head is None else self._pointer_target(head)
            if data_key is not None and not self._still_needed(digest, key, data_key):
                data_keys.append(data_key)
        self._delete_keys(data_keys)

    def _still_needed(self, digest: Digest, released: str, data_key: str) -> bool:
        for key in (
            self.keys.blob(digest),
            self.keys.blob_trash(digest),
            self.keys.quarantined(digest),
        ):
            found = self._head(key) if key != released else None
            if found is not None and self._pointer_target(found) == data_key:
                return True
        upload_id = self.keys.upload_of_data(data_key)
        return upload_id is not None and self._head(self.keys.upload_state(upload_id)) is not None

    async def list_trash(self) -> AsyncIterator[Digest]:
        """Every object under `_gc-trash/`."""
        async for page in self._walk("gc", "list_objects_v2", Prefix=self.keys.trash):
            for item in page.get("Contents", []):
                digest = self.keys.digest_of_trash_key(item["Key"])
                if digest is not None:
                    yield digest

    async def redirect_url(self, digest: Digest) -> str | None:
        """A presigned GET URL of the object holding the bytes, valid for `redirect_expiry`,
        when `redirect` is on."""
        if not self.settings.redirect:
            return None

        def presign() -> str:
            return str(
                self.client.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self.settings.bucket, "Key": self._data_key(digest)},
                    ExpiresIn=int(self.settings.redirect_expiry),
                )
            )

        return await self._run("presign", presign)

    async def read(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream a byte range of the blob (a ranged GetObject, at most up to `end`);
        `BlobDamaged` before the first byte when the object is missing."""
        if end is not None and end <= start:
            return
        key = await self._run("read", self._data_key, digest)
        async for chunk in self._get("read", key, start, end, digest):
            yield chunk

    async def _get(
        self,
        operation: str,
        key: str,
        start: int = 0,
        end: int | None = None,
        digest: Digest | None = None,
    ) -> AsyncIterator[bytes]:
        kwargs: dict[str, Any] = {"Bucket": self.settings.bucket, "Key": key}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"

        def open_body() -> Any:
            try:
                return self.client.get_object(**kwargs)["Body"]
            except ClientError as exc:
                if _missing(exc):
                    if digest is not None:
                        raise BlobDamaged(digest, end or 0, None) from exc
                    raise FileNotFoundError(f"s3 object {key} does not exist") from exc
                raise

        body = await self._run(operation, open_body)
        try:
            while chunk := await self._run(operation, body.read, READ_CHUNK):
                yield chunk
        finally:
            await self._local(body.close)

    async def delete(self, digest: Digest) -> None:
        """Delete the blob (and the data object its pointer names)."""
        await self._run("delete", self._release, [(digest, self.keys.blob(digest))])

    async def delete_blobs(self, digests: list[Digest]) -> None:
        """Delete many blobs (DeleteObjects, 1000 keys per request)."""
        await self._run(
            "delete", self._release, [(digest, self.keys.blob(digest)) for digest in digests]
        )

    async def list_blobs(self) -> AsyncIterator[StoredObject]:
        """Every object under `blobs/`, a listing page (1000 keys) at a time (a pointer's size
        is that of the pointer, not of its data)."""
        async for page in self._walk("list_blobs", "list_objects_v2", Prefix=self.keys.blobs):
            for item in page.get("Contents", []):
                digest = self.keys.digest_of_blob_key(item["Key"])
                if digest is not None:
                    yield StoredObject(str(digest), item["Size"], item["LastModified"].timestamp())

    async def list_uploads(self) -> AsyncIterator[StoredObject]:
        """Uploads with objects under `_uploads/` (their state, pieces; or segments an older
        version left) or a local spool an older version left, and incomplete multipart
        uploads no upload owns (on a data key whose upload is gone, or on a blob key)."""
        found: dict[str, StoredObject] = {}
        async for page in self._walk("list_uploads", "list_objects_v2", Prefix=self.keys.uploads):
            for item in page.get("Contents", []):
                upload_id = self.keys.upload_of_key(item["Key"])
                if upload_id is not None:
                    _merge_upload(found, upload_id, 0, item["LastModified"].timestamp())
        for upload_id, size, modified in await self._local(self._spooled):
            _merge_upload(found, upload_id, size, modified)
        for upload_id, stored in found.items():
            state = await self._load_state_quietly(upload_id)
            size = stored.size if state is None else state.size
            yield StoredObject(upload_id, size, stored.modified)
        for prefix in (self.keys.data, self.keys.blobs):
            async for page in self._walk("list_uploads", "list_multipart_uploads", Prefix=prefix):
                for item in page.get("Uploads", []):
                    owner = self.keys.upload_of_data(item["Key"])
                    if owner is not None and owner in found:
                        continue  # aborted with its upload
                    yield StoredObject(
                        f"{MULTIPART_MARK}{item['UploadId']} {item['Key']}",
                        0,
                        item["Initiated"].timestamp(),
                    )

    async def _load_state_quietly(self, upload_id: str) -> UploadState | None:
        try:
            return await self._load_state(upload_id)
        except StorageUnavailable:
            return None

    def _spooled(self) -> list[tuple[str, int, float]]:
        """Spool folders of an older version (uploads then went through local disk)."""
        found: list[tuple[str, int, float]] = []
        if not self.layout.s3_spool.is_dir():
            return found
        for folder in os.scandir(self.layout.s3_spool):
            if not folder.is_dir():
                continue
            size, modified = 0, folder.stat().st_mtime
            for entry in os.scandir(folder.path):
                stat = entry.stat()
                size += stat.st_size
                modified = max(modified, stat.st_mtime)
            found.append((folder.name, size, modified))
        return found

    async def close(self) -> None:
        """Stop the thread pool and close the connection pool."""
        for upload_id in list(self._uploads):
            await self.drop_pending(upload_id)
        self._pool.shutdown(wait=True)
        self.client.close()
        self.data_client.close()


@dataclass
class _Upload:
    """What one process holds of an upload between `_activate` and `flush` (or `abort`): the
    bytes not yet in a part, the parts in flight and those answered but not yet recorded."""

    state: UploadState
    buffer: bytearray | None = None
    #: Where the buffer begins in the upload (= the end of every part sent or in flight).
    buffer_start: int = 0
    sending: list[asyncio.Future[Part]] = field(default_factory=list)
    sent: list[Part] = field(default_factory=list)
    #: Upload memory held for the buffer.
    held: int = 0
    #: Between requests: the bytes of the unfinished part (as the pieces hold them), kept while
    #: memory allows, and the memory they hold.
    cached: bytearray | None = None
    cached_held: int = 0
    #: Being activated: its kept bytes are not evicted.
    pinned: bool = False
    #: SHA-256 of the buffer's bytes so far (the part they will be sent in).
    part_hash: Any = field(default_factory=hashlib.sha256)
    #: Whether its state object exists (false for a non-resumable upload until its commit).
    stored: bool = True

    @property
    def active(self) -> bool:
        """Receiving or committing in this process now."""
        return self.buffer is not None

    def checksum(self) -> str:
        """`x-amz-checksum-sha256` of the buffer's bytes."""
        return base64.b64encode(self.part_hash.digest()).decode()

    def take_checksum(self) -> str:
        """The buffer's checksum; the next part's hash starts empty."""
        checksum = self.checksum()
        self.part_hash = hashlib.sha256()
        return checksum


def _client(session: boto3.session.Session, settings: S3Settings, **s3: Any) -> Any:
    """An S3 client with the settings' pool, timeouts and retries, that never sends
    `Expect: 100-continue`.

    botocore adds that header to every PUT with a body, empty ones included. A server on Go's
    net/http (SeaweedFS, MinIO) answers an empty PUT at once, without `100 Continue`; botocore
    then keeps that early status line on the pooled connection (`AWSConnection.response_class`)
    and reads the *next* response that comes after a `100 Continue` against it: the real status
    line is parsed as a header, Content-Length is lost, and the read waits for `read_timeout`
    before a retry sends the request again (boto/botocore#3755). Without the header the body is
    sent with the headers (one round trip less), and a refusal still comes as the response.
    """
    client = session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        config=BotoConfig(
            signature_version="s3v4",
            max_pool_connections=settings.max_pool_connections,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            # botocore's `max_attempts` counts the retries only; the setting counts every try.
            retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
            s3={"addressing_style": settings.addressing_style, **s3},
        ),
    )
    client.meta.events.unregister("before-call.s3", add_expect_header)
    return client


def _merge_upload(
    found: dict[str, StoredObject], upload_id: str, size: int, modified: float
) -> None:
    previous = found.get(upload_id)
    if previous is not None:
        size += previous.size
        modified = max(modified, previous.modified)
    found[upload_id] = StoredObject(upload_id, size, modified)


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _missing(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 404 or str(error.get("Code")) in _MISSING_CODES
