"""Blob uploads: `POST`/`PATCH`/`PUT`/`GET`/`DELETE /v2/<name>/blobs/uploads/` (spec: "Pushing
blobs": monolithic, chunked, resumable; "Mounting a blob from another repository")."""

from __future__ import annotations

from aiohttp import web

from registry.context import context
from registry.errors import ANSWERABLE, RegistryError
from registry.handlers.blobs import reader
from registry.query import single
from registry.upload_sessions import ContentRange, upload_headers
from storage.oci.digests import parse_digest
from storage.oci.errors import DIGEST_INVALID, NAME_INVALID
from storage.oci.grammar import check_name


def _blob_created(name: str, digest: str) -> web.Response:
    return web.Response(
        status=201,
        headers={
            "Location": f"/v2/{name}/blobs/{digest}",
            "Docker-Content-Digest": digest,
            "Content-Length": "0",
        },
    )


async def start_upload(request: web.Request, name: str, _: str) -> web.StreamResponse:
    """Start a session; or upload monolithically with `?digest=`; or mount with `?mount=&from=`."""
    ctx = context(request)
    mount = single(request, "mount", DIGEST_INVALID)
    if mount is not None:
        digest = parse_digest(mount)
        source = single(request, "from", NAME_INVALID)
        if (
            source
            and await _mountable(request, check_name(source), str(digest))
            and await ctx.db.mount_blob(name, source, str(digest)) is not None
        ):
            return _blob_created(name, str(digest))
        # Not mountable: fall back to a regular session, as the spec says (202). A client that
        # really holds the bytes uploads them; one that does not gets nothing.
    digest_text = single(request, "digest", DIGEST_INVALID)
    if digest_text is not None and mount is None:
        digest = parse_digest(digest_text)
        upload_id = await ctx.uploads.start(name, resumable=False)
        await ctx.uploads.finish(name, upload_id, digest, request.content)
        return _blob_created(name, str(digest))
    upload_id = await ctx.uploads.start(name)
    return web.Response(
        status=202, headers={**upload_headers(name, upload_id, 0), "Content-Length": "0"}
    )


async def _mountable(request: web.Request, source: str, digest: str) -> bool:
    """Whether the caller may copy the blob out of `source`: as for reading it there, a blob
    only part of images the policy refuses to pull (quarantined) is not lent out."""
    try:
        await context(request).policy.check_blob_read(source, digest, reader(request, source))
    except ANSWERABLE:
        return False
    return True


async def patch_upload(request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
    """Append a chunk; `Content-Range` (if sent) must start where the upload ends, else 416."""
    ctx = context(request)
    header = request.headers.get("Content-Range")
    offset = await ctx.uploads.append(
        name,
        upload_id,
        request.content,
        content_range=None if header is None else ContentRange.parse(header),
        content_length=request.content_length,
    )
    return web.Response(
        status=202, headers={**upload_headers(name, upload_id, offset), "Content-Length": "0"}
    )


async def finish_upload(request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
    """Close the session with `?digest=`, optionally with the last chunk in the body."""
    ctx = context(request)
    digest_text = single(request, "digest", DIGEST_INVALID)
    if not digest_text:
        await ctx.uploads.offset(name, upload_id)  # an unknown session is the first problem
        raise RegistryError(DIGEST_INVALID, {"reason": "the digest query parameter is required"})
    digest = parse_digest(digest_text)
    body = request.content if request.body_exists else None
    header = request.headers.get("Content-Range")
    await ctx.uploads.finish(
        name,
        upload_id,
        digest,
        body,
        content_range=None if body is None or header is None else ContentRange.parse(header),
        content_length=request.content_length,
    )
    return _blob_created(name, str(digest))


async def upload_status(request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
    """Where a session stands: `204` with `Range: 0-<last byte>`."""
    offset = await context(request).uploads.offset(name, upload_id)
    return web.Response(status=204, headers=upload_headers(name, upload_id, offset))


async def cancel_upload(request: web.Request, name: str, upload_id: str) -> web.StreamResponse:
    """Cancel a session and drop its bytes."""
    await context(request).uploads.cancel(name, upload_id)
    return web.Response(status=204)
