"""Manifests: `PUT`/`GET`/`HEAD`/`DELETE /v2/<name>/manifests/<reference>` (spec: "Pulling
manifests", "Pushing manifests", "Pushing manifests with subject", "Deleting")."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from aiohttp import web

from policies.decisions import Action
from policies.facts import PolicyRequest
from policies.library.recording import record_library_delete, record_library_push
from policies.signatures.proofs import push_problem, signature_pushed
from registry.auth.producers import quarantine_reader
from registry.context import RegistryContext, context
from registry.errors import RegistryError
from registry.events.hub import EVENTS
from registry.identity import identity
from storage.metadata import ManifestRecord, MetadataDB, MissingReferences, Statements
from storage.oci.digests import Digest, parse_digest
from storage.oci.errors import (
    DIGEST_INVALID,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_TOO_LARGE,
    MANIFEST_UNKNOWN,
    NAME_UNKNOWN,
    UNSUPPORTED,
    OciError,
)
from storage.oci.grammar import check_tag, is_digest
from storage.oci.manifest import MAX_MANIFEST_SIZE, ParsedManifest, Reference, parse_manifest

#: Manifests larger than this are parsed in a thread (a typical image manifest is a few KiB).
LARGE_MANIFEST = 64 * 1024


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
    """Validate and store a manifest, tagging it when pushed by tag."""
    ctx = context(request)
    tag = None if is_digest(reference) else check_tag(reference)
    expected = parse_digest(reference) if tag is None else None
    content = await _read_body(request)
    digest = Digest.of(content, expected.algorithm if expected else "sha256")
    if expected is not None and digest != expected:
        raise RegistryError(
            DIGEST_INVALID,
            {"expected": str(expected), "actual": str(digest)},
            message="manifest digest did not match the digest in the URL",
        )
    content_type = request.headers.get("Content-Type")
    if len(content) > LARGE_MANIFEST:
        # Reading a large manifest is CPU work: in a thread, the event loop keeps answering
        # other clients between its steps instead of stalling for the whole parse.
        parsed = await asyncio.to_thread(
            _parse, content, content_type, ctx.policy.policy, tag, str(digest)
        )
    else:
        parsed = _parse(content, content_type, ctx.policy.policy, tag, str(digest))
    record = ManifestRecord(
        repository=name,
        digest=str(digest),
        media_type=parsed.media_type,
        content=content,
        subject=parsed.subject,
        artifact_type=parsed.artifact_type,
        annotations=parsed.annotations,
    )
    # Policy: checked before anything is stored, so a denied push leaves no manifest and no tag
    # (the denial is logged at once); an allowed push is logged only once stored.
    # The tag is held from check to store: two pushes to one tag cannot both pass immutability.
    events, actor = request.app[EVENTS], identity(request).name
    async with (
        ctx.policy.tag_guard(name, tag),
        events.reporting_denials("push", name, reference, str(digest), actor),
    ):
        check = await ctx.policy.check_push(
            PolicyRequest(
                Action.PUSH,
                name,
                reference,
                str(digest),
                () if tag is None else (tag,),
                actor,
            ),
            parsed.media_type,
            content,
        )
        # Events are written in the transaction that stores the manifest (the outbox).
        library = check.policy.library
        legacy = tag is not None and events.is_library(name, library)  # deprecated globs
        previous = await ctx.db.tag_target(name, tag) if tag and legacy else None
        outbox = events.push_statements(record, tag, actor, previous)
        await _store(ctx, record, parsed.references, tag, outbox)
        await ctx.policy.pushed(check)
        # The base-image library: a declared library tag's history (its move announced as
        # `library.tag.updated`, in the same transaction), the image's lineage.
        await record_library_push(
            ctx.db,
            ctx.store,
            library,
            name,
            str(digest),
            content,
            tag,
            events.library_moved(actor),
            check.lineage,
        )
    ctx.policy.evidence_changed(name)
    events.committed()
    # A signature (`.sig` tag or signature referrer) is verified now and its proofs recorded,
    # so pulls of the image it signs cost no cryptography.
    if await signature_pushed(ctx.db, ctx.store, ctx.policy.policy, name, content, tag):
        await ctx.policy.evidence_arrived(name)
    headers = {
        "Location": f"/v2/{name}/manifests/{digest}",
        "Docker-Content-Digest": str(digest),
        "Content-Length": "0",
        **check.headers,
    }
    if parsed.subject is not None:
        headers["OCI-Subject"] = parsed.subject
    return web.Response(status=201, headers=headers)


def _parse(
    content: bytes, content_type: str | None, policy: Any, tag: str | None, digest: str
) -> ParsedManifest:
    """Validate a pushed manifest; a signature the policy would verify is refused up front when
    it is over the verification limits."""
    # The limits first: a hostile signature manifest is refused without the full parse.
    problem = push_problem(policy, content, tag)
    if problem is not None:
        raise RegistryError(MANIFEST_INVALID, {"digest": digest}, message=problem)
    return parse_manifest(content, content_type)


async def _store(
    ctx: RegistryContext,
    record: ManifestRecord,
    references: list[Reference],
    tag: str | None,
    outbox: Statements = (),
) -> None:
    """Store the manifest (and move the tag) with its outbox rows; MANIFEST_BLOB_UNKNOWN names
    what is missing."""
    try:
        await ctx.db.put_manifest(record, references, tag, outbox)
    except MissingReferences as exc:
        missing = exc.missing[0]
        raise RegistryError(
            MANIFEST_BLOB_UNKNOWN,
            {"digest": missing.digest, "missing": [ref.digest for ref in exc.missing]},
            message=f"manifest references {missing.kind} {missing.digest} unknown to "
            f"repository {record.repository}",
        ) from None


async def _read_body(request: web.Request) -> bytes:
    """The request body, refused with 413 past the manifest size limit without reading it all."""
    declared = request.content_length
    if declared is not None and declared > MAX_MANIFEST_SIZE:
        raise _too_large(declared)
    body = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > MAX_MANIFEST_SIZE:
            raise _too_large(len(body))
    return bytes(body)


def _too_large(size: int) -> RegistryError:
    return RegistryError(
        MANIFEST_TOO_LARGE,
        {"size": size, "limit": MAX_MANIFEST_SIZE},
        message=f"manifest larger than the {MAX_MANIFEST_SIZE} byte limit",
    )


async def delete_manifest(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """Delete a manifest by digest (with its tags), or only a tag by tag."""
    ctx = context(request)
    if not ctx.config.delete_enabled:
        raise RegistryError(UNSUPPORTED, message="deletes are disabled on this registry")
    key = valid_reference(name, reference)
    digest = key if is_digest(reference) else None
    tag = key if digest is None else None
    # Policy: checked before deleting; an unknown manifest or tag falls through to 404.
    if digest is not None:
        record = await ctx.db.get_manifest(name, digest)
    else:
        record = await ctx.db.get_tagged_manifest(name, reference)
    policy_headers: dict[str, str] = {}
    events, actor = request.app[EVENTS], identity(request).name
    outbox: Statements = ()
    tags: tuple[str, ...] = ()
    if record is not None:
        tags = (tag,) if tag is not None else tuple(await ctx.db.tags_of(name, record.digest))
        async with events.reporting_denials("delete", name, reference, record.digest, actor):
            policy_headers = await ctx.policy.check_delete(
                PolicyRequest(Action.DELETE, name, reference, record.digest, tags, actor),
                record,
            )
        if digest is not None:
            # An index child goes only if no manifest the policy protects needs it.
            await ctx.policy.check_needed(name, digest, "manifest", actor)
        outbox = events.delete_statements(record, tag, list(tags), actor)
    if digest is not None:
        deleted = await ctx.db.delete_manifest(name, digest, outbox)
    else:
        deleted = await ctx.db.delete_tag(name, reference, outbox)
    if not deleted:
        raise RegistryError(MANIFEST_UNKNOWN, {"name": name, "reference": reference})
    # The base-image library: a deleted library tag's history ends.
    await record_library_delete(ctx.db, ctx.policy.policy.library, name, tags)
    ctx.policy.evidence_changed(name)
    events.committed()
    return web.Response(status=202, headers=policy_headers)
