"""Manifests: `PUT`/`GET`/`HEAD`/`DELETE /v2/<name>/manifests/<reference>` (spec: "Pulling
manifests", "Pushing manifests", "Pushing manifests with subject", "Deleting")."""

from __future__ import annotations

from functools import partial

from aiohttp import web

from registry.auth.producers import quarantine_reader
from registry.bodies import BodyTooLarge, read_bounded
from registry.context import context, pipeline
from registry.errors import RegistryError
from registry.events.hub import EVENTS
from registry.identity import identity
from registry.pipeline import ManifestDelete, ManifestPush
from registry.pipeline.push import read_reference, too_large
from storage.metadata import ManifestRecord, MetadataDB
from storage.oci.digests import parse_digest
from storage.oci.errors import MANIFEST_UNKNOWN, NAME_UNKNOWN, UNSUPPORTED, OciError
from storage.oci.grammar import check_tag, is_digest
from storage.oci.manifest import MAX_MANIFEST_SIZE


async def find_manifest(db: MetadataDB, name: str, reference: str) -> ManifestRecord:
    """The manifest a tag or digest names; NAME_UNKNOWN or MANIFEST_UNKNOWN if there is none
    (also for a reference outside the grammar: no manifest can have it, spec: "Pulling
    manifests")."""
    key = valid_reference(name, reference)
    if is_digest(reference):
        record = await db.get_manifest(name, key)
    else:
        record = await db.get_tagged_manifest(name, key)
    if record is None:
        if not await db.repository_exists(name):
            raise RegistryError(NAME_UNKNOWN, {"name": name})
        raise RegistryError(MANIFEST_UNKNOWN, {"name": name, "reference": reference})
    return record


def valid_reference(name: str, reference: str) -> str:
    """The tag or digest `reference`, checked; a reference no manifest can have is answered
    404 MANIFEST_UNKNOWN (with the grammar's reason), as the spec says of a manifest not found."""
    try:
        return str(parse_digest(reference)) if is_digest(reference) else check_tag(reference)
    except OciError as exc:
        raise RegistryError(
            MANIFEST_UNKNOWN,
            {"name": name, "reference": reference[:200], "reason": exc.detail},
        ) from None


async def get_manifest(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """Return the manifest's exact bytes with its pushed media type; HEAD the headers only."""
    ctx = context(request)
    record = await find_manifest(ctx.db, name, reference)
    # Policy: a manifest stored but not pullable under the pull rules is quarantined.
    events, actor = request.app[EVENTS], identity(request).name
    async with events.reporting_denials("pull", name, reference, record.digest, actor):
        policy_headers = await ctx.policy.check_pull(
            name, reference, record, actor, partial(quarantine_reader, request, name)
        )
    if request.method == "GET":
        tag = None if is_digest(reference) else reference
        await events.pulls.pulled(name, tag, record.digest, record.media_type, record.size, actor)
    headers = {
        "Docker-Content-Digest": record.digest,
        "ETag": f'"{record.digest}"',
        "Content-Type": record.media_type,
        **policy_headers,
    }
    if request.method == "HEAD":
        headers["Content-Length"] = str(record.size)
        return web.Response(headers=headers)
    return web.Response(body=record.content, headers=headers)


async def put_manifest(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """Store a manifest (tagging it when pushed by tag): 201 with its location and digest."""
    read_reference(reference)  # TAG_INVALID or DIGEST_INVALID before the body is read
    push = ManifestPush(
        repository=name,
        reference=reference,
        content=await _read_body(request),
        content_type=request.headers.get("Content-Type"),
        actor=identity(request).name,
    )
    stored = await pipeline(request).push(push)
    headers = {
        "Location": f"/v2/{name}/manifests/{stored.digest}",
        "Docker-Content-Digest": stored.digest,
        "Content-Length": "0",
        **stored.headers,
    }
    if stored.subject is not None:
        headers["OCI-Subject"] = stored.subject
    return web.Response(status=201, headers=headers)


async def _read_body(request: web.Request) -> bytes:
    """The request body, refused with 413 past the manifest size limit without reading it all."""
    declared = request.content_length
    if declared is not None and declared > MAX_MANIFEST_SIZE:
        raise too_large(declared)
    try:
        return await read_bounded(request.content, MAX_MANIFEST_SIZE)
    except BodyTooLarge as exc:
        raise too_large(exc.size) from None


async def delete_manifest(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """Delete a manifest by digest (with its tags), or only a tag by tag: 202."""
    if not context(request).config.delete_enabled:
        raise RegistryError(UNSUPPORTED, message="deletes are disabled on this registry")
    key = valid_reference(name, reference)
    by_digest = is_digest(reference)
    deleted = await pipeline(request).delete(
        ManifestDelete(
            repository=name,
            reference=reference,
            actor=identity(request).name,
            digest=key if by_digest else None,
            tag=None if by_digest else key,
        )
    )
    return web.Response(status=202, headers=deleted.headers)
