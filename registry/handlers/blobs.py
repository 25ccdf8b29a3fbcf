"""Blobs: `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>` (spec: "Pulling blobs", "Deleting")."""

from __future__ import annotations

import re
from functools import partial

from aiohttp import web

from policies.blob_access import Reader
from registry.auth.middleware import may_push
from registry.auth.producers import quarantine_reader
from registry.context import context
from registry.errors import RegistryError
from registry.identity import identity
from registry.pipeline.delete import delete_blob as delete_blob_checked
from storage.oci.digests import parse_digest
from storage.oci.errors import BLOB_UNKNOWN, RANGE_INVALID, UNSUPPORTED
from storage.oci.grammar import MAX_DIGITS

#: The one form of `Range` served: `bytes=<start>-[<end>]` or `bytes=-<suffix>`, ASCII digits.
_NUMBER = f"[0-9]{{1,{MAX_DIGITS}}}"
_RANGE_RE = re.compile(rf"bytes=(?:{_NUMBER}-(?:{_NUMBER})?|-{_NUMBER})")


def reader(request: web.Request, name: str) -> Reader:
    """The caller of `request` as the blob gate sees them for repository `name`; who may read a
    quarantined image's blobs is who may read the image (`quarantine_reader`, as for its
    manifest)."""
    return Reader(
        identity(request).name, may_push(request, name), partial(quarantine_reader, request, name)
    )


async def get_blob(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """Serve a blob (sendfile, or a redirect), honouring a single `Range`; HEAD answers metadata."""
    ctx = context(request)
    digest = parse_digest(reference)
    size = await ctx.db.blob_in_repository(name, str(digest))
    if size is None:
        raise RegistryError(BLOB_UNKNOWN, {"digest": str(digest)})
    # Policy: the bytes of an image the pull rules refuse (quarantined) are refused too.
    await ctx.policy.check_blob_read(
        name, str(digest), reader(request, name), content=request.method != "HEAD"
    )
    await ctx.store.verify_size(digest, size)  # never a short body: a damaged blob is unknown
    headers = {
        "Docker-Content-Digest": str(digest),
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000",
    }
    if request.method == "HEAD":
        headers["Content-Length"] = str(size)
        headers["Content-Type"] = "application/octet-stream"
        return web.Response(headers=headers)
    redirect = await ctx.store.redirect_url(digest)
    if redirect is not None:
        return web.Response(status=307, headers={**headers, "Location": redirect})
    start, end = requested_range(request, size)
    path = ctx.store.local_path(digest)
    if path is not None:
        # FileResponse answers the Range itself (206 + Content-Range) with zero-copy sendfile.
        response = web.FileResponse(path, headers=headers)
        response.content_type = "application/octet-stream"
        return response
    partial = start != 0 or end != size
    if partial:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    chunks = aiter(ctx.store.read(digest, start, end))
    # The first bytes are fetched before the status line goes out, so that a backend failure
    # (S3 unreachable) is still answered with the spec's error body, not a truncated 200.
    first = await anext(chunks, b"")
    response = web.StreamResponse(status=206 if partial else 200, headers=headers)
    response.content_type = "application/octet-stream"
    response.content_length = end - start
    await response.prepare(request)
    if first:
        await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


def requested_range(request: web.Request, size: int) -> tuple[int, int]:
    """The byte range asked for as [start, end); RANGE_INVALID when it cannot be served."""
    if "Range" not in request.headers:
        return 0, size
    unsatisfiable = RegistryError(
        RANGE_INVALID,
        {"Range": request.headers["Range"][:100], "size": size},
        message="requested range not satisfiable",
        headers={"Content-Range": f"bytes */{size}"},
    )
    # One range of ASCII digits (aiohttp's parser also reads other scripts' digits, and
    # raises on huge numbers only after converting them).
    if _RANGE_RE.fullmatch(request.headers["Range"]) is None:
        raise unsatisfiable
    try:
        requested = request.http_range
    except ValueError:
        raise unsatisfiable from None
    start, stop = requested.start, requested.stop
    if start is None and stop is None:
        return 0, size
    if start is not None and start < 0:  # suffix range: the last -start bytes
        if -start > size:
            start = -size
        start = size + start
        stop = size
    start = start or 0
    stop = size if stop is None else min(stop, size)
    if start >= size or start >= stop:
        raise unsatisfiable
    return start, stop


async def delete_blob(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """Unlink a blob from the repository (its bytes go at the next garbage collection)."""
    ctx = context(request)
    digest = parse_digest(reference)
    if not ctx.config.delete_enabled:
        raise RegistryError(UNSUPPORTED, message="deletes are disabled on this registry")
    # Policy: content a protected manifest (an immutable release) needs stays.
    await delete_blob_checked(ctx.db, ctx.policy, name, str(digest), identity(request).name)
    return web.Response(status=202, headers={"Docker-Content-Digest": str(digest)})
