"""The S3 blob backend: blobs as objects in a bucket, uploads as segments plus a local spool.

Where every key lives is drawn in `storage.layout`. How an upload travels:

* `append` writes the client's bytes to a spool file on local disk
  (`<data-dir>/s3-spool/<id>/<start>`). As soon as the spool holds one part
  (`part_size`, at least S3's 5 MiB minimum) it is sent as an ordinary object, a *segment*
  (`_uploads/<id>/<start>`), and a new empty spool file begins where the segment ends. Small client
  chunks therefore wait on disk, never in memory, and big uploads stream to S3 as they arrive.
* `commit` (called only after the digest was verified) starts one multipart upload on the blob's
  own key, turns every segment into a part with UploadPartCopy (a server-side copy, no bytes
  through Trustyard), sends the spooled tail as the last part and completes it. Until the
  completion nothing exists under `blobs/`; on any failure the multipart upload is aborted.
  Small blobs (no segment yet) are one PutObject, one segment alone one CopyObject.

Why segments rather than one multipart upload streamed from the first byte: the parts of an
unfinished multipart upload cannot be read back, yet `read_upload` must replay an upload's bytes to
rebuild the running sha256 after a restart (the hash state cannot be saved). Segments are plain
objects, readable at any time, and become parts at commit without being uploaded twice.

Crash safety: the spool file's name says where it begins. After a segment is stored, a new spool
file is created and only then the old one removed, so a crash leaves either the old file (whose
bytes the segment already holds) or both; the file that begins where the segments end is the live
one (`_tail` reconciles this once per upload and process). Upload sessions belong to the process
owning the local metadata database, so a local spool is visible wherever the session is.

boto3 blocks, so every call runs in a bounded thread pool whose size is also botocore's
connection-pool size. Calls have connect and read timeouts and a bounded number of retries: an
unreachable S3 becomes `StorageUnavailable` (503 UNAVAILABLE for the client), logged with the S3
request id when there is one, and never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from storage.blobstore import StoredObject
from storage.errors import BlobDamaged, StorageFull, StorageUnavailable
from storage.layout import DataLayout, S3Layout, s3_prefix
from storage.oci.digests import Digest
from storage.settings import S3Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Bytes read from S3 per step when a blob or segment is streamed.
READ_CHUNK = 1 << 20

#: Most keys one DeleteObjects request may name.
DELETE_BATCH = 1000

#: The name `list_uploads` gives an incomplete multipart upload on a blob key (a commit that
#: died): `multipart <s3-upload-id> <key>`, which `abort` understands.
MULTIPART_MARK = "multipart "

_MISSING_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchUpload"}


class S3BlobStore:
    """Blobs in an S3 bucket (see the module docstring for how uploads travel)."""

    def __init__(self, settings: S3Settings, layout: DataLayout) -> None:
        self.settings = settings
        self.keys = S3Layout(s3_prefix(settings.prefix))
        self.layout = layout
        self.layout.s3_spool.mkdir(parents=True, exist_ok=True)
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            aws_session_token=settings.session_token,
            profile_name=settings.profile,
            region_name=settings.region,
        )
        self.client = session.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            config=BotoConfig(
                signature_version="s3v4",
                max_pool_connections=settings.max_pool_connections,
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                retries={"max_attempts": settings.max_attempts, "mode": "standard"},
                s3={"addressing_style": settings.addressing_style},
            ),
        )
        self._pool = ThreadPoolExecutor(
            max_workers=settings.max_pool_connections, thread_name_prefix="s3"
        )
        self._bucket_ready = False
        #: Keys per listing request (S3 answers at most 1000).
        self.list_page_size = 1000
        #: Upload id -> where its spooled tail begins (= bytes already in S3 segments).
        self._tails: dict[str, int] = {}
        self._sse: dict[str, str] = {}
        if settings.server_side_encryption:
            self._sse["ServerSideEncryption"] = settings.server_side_encryption
        if settings.sse_kms_key_id:
            self._sse["SSEKMSKeyId"] = settings.sse_kms_key_id

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, operation: str, func: Callable[..., T], *args: object) -> T:
        """Run blocking S3 work in the pool; S3 failures become StorageUnavailable."""
        loop = asyncio.get_running_loop()
        try:
            if not self._bucket_ready:
                await loop.run_in_executor(self._pool, self._ensure_bucket)
            return await loop.run_in_executor(self._pool, func, *args)
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable(operation, exc) from exc
        except OSError as exc:
            # Appends write the spool on local disk in the same step as the segment upload.
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("disk (S3 spool)") from exc
            raise

    async def _local(self, func: Callable[..., T], *args: object) -> T:
        """Run blocking local-disk work in the pool."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("disk (S3 spool)") from exc
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

    async def start_upload(self, upload_id: str) -> None:
        """Create the upload's spool folder with an empty tail beginning at 0."""
        await self._local(self._start_spool, upload_id)

    def _start_spool(self, upload_id: str) -> None:
        folder = self.layout.spool(upload_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "0").touch()
        self._tails[upload_id] = 0

    async def upload_size(self, upload_id: str) -> int | None:
        """Bytes in S3 segments plus bytes spooled, or None if the upload does not exist."""
        return await self._run("upload_size", self._upload_size, upload_id)

    def _upload_size(self, upload_id: str) -> int | None:
        start = self._tail(upload_id)
        if start is None:
            return None
        try:
            return start + (self.layout.spool(upload_id) / str(start)).stat().st_size
        except FileNotFoundError:
            return None

    def _tail(self, upload_id: str) -> int | None:
        """Where the live spool file begins; reconciled with S3 once per upload and process."""
        folder = self.layout.spool(upload_id)
        known = self._tails.get(upload_id)
        if known is not None and (folder / str(known)).exists():
            return known
        if not folder.is_dir():
            self._tails.pop(upload_id, None)
            return None
        end = 0
        for start, size in self._segments(upload_id):
            if start != end:
                raise RuntimeError(f"upload {upload_id}: segments leave a gap at byte {end}")
            end = start + size
        (folder / str(end)).touch()
        for stale in folder.iterdir():
            if stale.name != str(end):
                # Bytes a stored segment already holds (a crash between the two steps).
                stale.unlink(missing_ok=True)
        self._tails[upload_id] = end
        return end

    def _segments(self, upload_id: str) -> list[tuple[int, int]]:
        """(start, size) of every segment of an upload, in order."""
        found: list[tuple[int, int]] = []
        for page in self._pages("list_objects_v2", Prefix=self.keys.upload(upload_id)):
            for item in page.get("Contents", []):
                parsed = self.keys.parse_segment(item["Key"])
                if parsed is not None:
                    found.append((parsed[1], item["Size"]))
        return sorted(found)

    async def append(self, upload_id: str, data: bytes) -> None:
        """Spool `data`; send the spool as a segment once it holds a full part."""
        await self._run("append", self._append, upload_id, data)

    def _append(self, upload_id: str, data: bytes) -> None:
        start = self._tail(upload_id)
        if start is None:
            raise FileNotFoundError(f"no upload {upload_id}")
        path = self.layout.spool(upload_id) / str(start)
        with path.open("ab") as handle:
            handle.write(data)
            size = handle.tell()
        if size < self.settings.part_size:
            return
        with path.open("rb") as handle:
            self.client.put_object(
                Bucket=self.settings.bucket,
                Key=self.keys.segment(upload_id, start),
                Body=handle,
                ContentLength=size,
                **self._sse,
            )
        # New tail first, old tail second: a crash in between is resolved by `_tail`.
        (path.parent / str(start + size)).touch()
        self._tails[upload_id] = start + size
        path.unlink()

    async def read_upload(self, upload_id: str) -> AsyncIterator[bytes]:
        """The segments from S3, then the spooled tail."""
        start = await self._run("read_upload", self._tail, upload_id)
        if start is None:
            return
        for segment_start, _ in await self._run("read_upload", self._segments, upload_id):
            if segment_start >= start:
                break
            async for chunk in self._get(
                "read_upload", self.keys.segment(upload_id, segment_start)
            ):
                yield chunk
        path = self.layout.spool(upload_id) / str(start)
        handle = await self._local(path.open, "rb")
        try:
            while chunk := await self._local(handle.read, READ_CHUNK):
                yield chunk
        finally:
            await self._local(handle.close)

    async def commit(self, upload_id: str, digest: Digest) -> None:
        """Assemble the verified upload onto the blob's key, then drop the upload."""
        await self.place(upload_id, digest)
        try:
            await self.abort(upload_id)
        except StorageUnavailable:
            # The blob is safe; the leftovers are an orphan upload for garbage collection.
            log.warning("upload %s committed but its segments were not removed", upload_id)

    async def place(self, upload_id: str, digest: Digest) -> None:
        """Assemble the verified upload onto the blob's key (overwriting whatever object had
        it, which repairs a damaged one); the segments and spool stay until `abort`."""
        start = await self._run("commit", self._tail, upload_id)
        if start is None:
            raise FileNotFoundError(f"no upload {upload_id}")
        segments = [s for s in await self._run("commit", self._segments, upload_id) if s[0] < start]
        tail = self.layout.spool(upload_id) / str(start)
        tail_size = (await self._local(os.stat, tail)).st_size
        key = self.keys.blob(digest)
        if not segments:
            await self._run("commit", self._put_file, key, tail, tail_size)
        elif len(segments) == 1 and tail_size == 0:
            await self._run("commit", self._copy, self.keys.segment(upload_id, 0), key)
        else:
            await self._assemble(upload_id, key, segments, tail, tail_size)

    def _put_file(self, key: str, path: Path, size: int) -> None:
        with path.open("rb") as handle:
            self.client.put_object(
                Bucket=self.settings.bucket, Key=key, Body=handle, ContentLength=size, **self._sse
            )

    def _copy(self, source: str, key: str) -> None:
        self.client.copy_object(
            Bucket=self.settings.bucket,
            Key=key,
            CopySource={"Bucket": self.settings.bucket, "Key": source},
            **self._sse,
        )

    async def _assemble(
        self,
        upload_id: str,
        key: str,
        segments: list[tuple[int, int]],
        tail: Path,
        tail_size: int,
    ) -> None:
        """One multipart upload onto `key`: segments copied server side, the tail sent last."""
        bucket = self.settings.bucket
        created = await self._run(
            "commit",
            lambda: self.client.create_multipart_upload(Bucket=bucket, Key=key, **self._sse),
        )
        multipart_id: str = created["UploadId"]

        def copy_part(number: int, start: int) -> dict[str, Any]:
            answer = self.client.upload_part_copy(
                Bucket=bucket,
                Key=key,
                UploadId=multipart_id,
                PartNumber=number,
                CopySource={"Bucket": bucket, "Key": self.keys.segment(upload_id, start)},
            )
            return {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}

        def send_tail(number: int) -> dict[str, Any]:
            with tail.open("rb") as handle:
                answer = self.client.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=multipart_id,
                    PartNumber=number,
                    Body=handle,
                    ContentLength=tail_size,
                )
            return {"PartNumber": number, "ETag": answer["ETag"]}

        try:
            jobs = [
                self._run("commit", copy_part, number, start)
                for number, (start, _) in enumerate(segments, 1)
            ]
            if tail_size:
                jobs.append(self._run("commit", send_tail, len(segments) + 1))
            results = await asyncio.gather(*jobs, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            parts = sorted(results, key=lambda part: part["PartNumber"])  # type: ignore[index]
            await self._run(
                "commit",
                lambda: self.client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=key,
                    UploadId=multipart_id,
                    MultipartUpload={"Parts": parts},
                ),
            )
        except BaseException:
            with contextlib.suppress(StorageUnavailable):
                await self._run("abort_multipart", self._abort_multipart, key, multipart_id)
            raise

    def _abort_multipart(self, key: str, multipart_id: str) -> None:
        try:
            self.client.abort_multipart_upload(
                Bucket=self.settings.bucket, Key=key, UploadId=multipart_id
            )
        except ClientError as exc:
            if not _missing(exc):
                raise

    async def abort(self, upload_id: str) -> None:
        """Delete an upload's segments and spool (or an incomplete multipart upload by name)."""
        if upload_id.startswith(MULTIPART_MARK):
            multipart_id, _, key = upload_id[len(MULTIPART_MARK) :].partition(" ")
            await self._run("abort_multipart", self._abort_multipart, key, multipart_id)
            return
        self._tails.pop(upload_id, None)
        keys = [
            self.keys.segment(upload_id, start)
            for start, _ in await self._run("abort", self._segments, upload_id)
        ]
        await self._run("abort", self._delete_keys, keys)
        await self._local(shutil.rmtree, self.layout.spool(upload_id), True)

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
        """The object's size from a HEAD, or None if there is no such object."""
        return await self._run("size", self._head_size, self.keys.blob(digest))

    def _head_size(self, key: str) -> int | None:
        try:
            return int(
                self.client.head_object(Bucket=self.settings.bucket, Key=key)["ContentLength"]
            )
        except ClientError as exc:
            if _missing(exc):
                return None
            raise

    def local_path(self, digest: Digest) -> Path | None:
        """S3 blobs have no local file."""
        return None

    async def verify_size(self, digest: Digest, size: int) -> None:
        """One HEAD of the object (a round trip, small beside the transfer it guards)."""
        found = await self.size(digest)
        if found != size:
            raise BlobDamaged(digest, size, found)

    async def quarantine(self, digest: Digest) -> None:
        """Copy a corrupt blob to `_quarantine/`, then delete its key."""
        await self._run("fsck", self._quarantine, digest)

    def _quarantine(self, digest: Digest) -> None:
        if self._head_size(self.keys.blob(digest)) is None:
            return
        self._managed_copy(self.keys.blob(digest), self.keys.quarantined(digest))
        self._delete_keys([self.keys.blob(digest)])

    async def move_to_trash(self, digests: list[Digest]) -> None:
        """Copy each blob to its trash key (server side), then delete the blob's key."""
        await self._run("gc", self._move_to_trash, digests)

    def _move_to_trash(self, digests: list[Digest]) -> None:
        moved = []
        for digest in digests:
            if self._head_size(self.keys.blob(digest)) is None:
                continue
            self._managed_copy(self.keys.blob(digest), self.keys.blob_trash(digest))
            moved.append(self.keys.blob(digest))
        self._delete_keys(moved)

    def _managed_copy(self, source: str, key: str) -> None:
        # boto3's managed copy: one CopyObject, or a multipart copy above 5 GB.
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
            missing = self._head_size(self.keys.blob(digest)) is None
            if missing and self._head_size(trash) is not None:
                self._managed_copy(trash, self.keys.blob(digest))
        self._delete_keys([self.keys.blob_trash(d) for d in digests])

    async def empty_trash(self, digests: list[Digest]) -> None:
        """Delete the trash keys."""
        await self._run("gc", self._delete_keys, [self.keys.blob_trash(d) for d in digests])

    async def list_trash(self) -> AsyncIterator[Digest]:
        """Every object under `_gc-trash/`."""
        async for page in self._walk("gc", "list_objects_v2", Prefix=self.keys.trash):
            for item in page.get("Contents", []):
                digest = self.keys.digest_of_trash_key(item["Key"])
                if digest is not None:
                    yield digest

    async def redirect_url(self, digest: Digest) -> str | None:
        """A presigned GET URL valid for `redirect_expiry`, when `redirect` is on."""
        if not self.settings.redirect:
            return None
        return await self._run(
            "presign",
            lambda: self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.settings.bucket, "Key": self.keys.blob(digest)},
                ExpiresIn=int(self.settings.redirect_expiry),
            ),
        )

    async def read(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream a byte range of the object (a ranged GetObject, at most up to `end`);
        `BlobDamaged` before the first byte when the object is missing."""
        if end is not None and end <= start:
            return
        async for chunk in self._get("read", self.keys.blob(digest), start, end, digest):
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
        """Delete the object (S3 deletes are idempotent)."""
        await self._run(
            "delete",
            lambda: self.client.delete_object(
                Bucket=self.settings.bucket, Key=self.keys.blob(digest)
            ),
        )

    async def delete_blobs(self, digests: list[Digest]) -> None:
        """Delete many blobs with DeleteObjects, 1000 keys per request."""
        await self._run("delete", self._delete_keys, [self.keys.blob(d) for d in digests])

    async def list_blobs(self) -> AsyncIterator[StoredObject]:
        """Every object under `blobs/`, a listing page (1000 keys) at a time."""
        async for page in self._walk("list_blobs", "list_objects_v2", Prefix=self.keys.blobs):
            for item in page.get("Contents", []):
                digest = self.keys.digest_of_blob_key(item["Key"])
                if digest is not None:
                    yield StoredObject(str(digest), item["Size"], item["LastModified"].timestamp())

    async def list_uploads(self) -> AsyncIterator[StoredObject]:
        """Uploads with segments in S3 or a local spool, and incomplete multipart uploads."""
        found: dict[str, StoredObject] = {}
        async for page in self._walk("list_uploads", "list_objects_v2", Prefix=self.keys.uploads):
            for item in page.get("Contents", []):
                parsed = self.keys.parse_segment(item["Key"])
                if parsed is not None:
                    _merge_upload(found, parsed[0], item["Size"], item["LastModified"].timestamp())
        for upload_id, size, modified in await self._local(self._spooled):
            _merge_upload(found, upload_id, size, modified)
        for stored in found.values():
            yield stored
        async for page in self._walk(
            "list_uploads", "list_multipart_uploads", Prefix=self.keys.blobs
        ):
            for item in page.get("Uploads", []):
                yield StoredObject(
                    f"{MULTIPART_MARK}{item['UploadId']} {item['Key']}",
                    0,
                    item["Initiated"].timestamp(),
                )

    def _spooled(self) -> list[tuple[str, int, float]]:
        found = []
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
        self._pool.shutdown(wait=True)
        self.client.close()


def _merge_upload(
    found: dict[str, StoredObject], upload_id: str, size: int, modified: float
) -> None:
    previous = found.get(upload_id)
    if previous is not None:
        size += previous.size
        modified = max(modified, previous.modified)
    found[upload_id] = StoredObject(upload_id, size, modified)


def _missing(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 404 or str(error.get("Code")) in _MISSING_CODES
