"""Storing a manifest pulled from upstream: the one way proxied manifests enter the registry.

A proxied manifest goes through what a pushed one goes through, in the same order: the same
parser (ambiguous or malformed documents refused), the signature limits, the policy's push
check (as the actor `proxy:<upstream>`), the event outbox in the storing transaction
(`image.pushed`, so scanners see new proxied digests), the decision log, the base-image library
records and the signature proofs. The difference: what it references need not be here yet
(blobs are fetched when a client asks for them), so references are stored as not required;
they still protect their targets from garbage collection.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from policies.decisions import Action
from policies.facts import PolicyRequest
from policies.library.recording import record_library_push
from policies.signatures.proofs import push_problem, signature_pushed
from registry.context import CONTEXT
from registry.errors import MANIFEST_INVALID, RegistryError
from registry.events.hub import EVENTS
from storage.metadata import ManifestRecord, Reference
from storage.oci.digests import Digest
from storage.oci.manifest import ParsedManifest, parse_manifest

#: Manifests larger than this are parsed in a thread.
LARGE_MANIFEST = 64 * 1024


def actor_of(upstream_name: str) -> str:
    """Who the decision log and events name for content pulled from `upstream_name`."""
    return f"proxy:{upstream_name}"


async def parse_pulled(
    app: web.Application, content: bytes, content_type: str | None, tag: str | None, digest: Digest
) -> ParsedManifest:
    """Parse a manifest from upstream as a pushed one is parsed; MANIFEST_INVALID otherwise."""
    policy = app[CONTEXT].policy.policy

    def parse() -> ParsedManifest:
        problem = push_problem(policy, content, tag)
        if problem is not None:
            raise RegistryError(MANIFEST_INVALID, {"digest": str(digest)}, message=problem)
        return parse_manifest(content, content_type)

    return await asyncio.to_thread(parse) if len(content) > LARGE_MANIFEST else parse()


async def store_pulled_manifest(
    app: web.Application,
    name: str,
    tag: str | None,
    content: bytes,
    parsed: ParsedManifest,
    digest: Digest,
    upstream_name: str,
) -> ManifestRecord:
    """Check, store and announce a manifest the upstream served for `name` (tagged `tag`),
    exactly as a push of it would be; DENIED when the policy refuses it (nothing stored)."""
    ctx = app[CONTEXT]
    events = app[EVENTS]
    actor = actor_of(upstream_name)
    reference = tag if tag is not None else str(digest)
    record = ManifestRecord(
        repository=name,
        digest=str(digest),
        media_type=parsed.media_type,
        content=content,
        subject=parsed.subject,
        artifact_type=parsed.artifact_type,
        annotations=parsed.annotations,
    )
    references = [Reference(ref.digest, ref.kind, required=False) for ref in parsed.references]
    async with (
        ctx.policy.tag_guard(name, tag),
        events.reporting_denials("push", name, reference, str(digest), actor),
    ):
        check = await ctx.policy.check_push(
            PolicyRequest(
                Action.PUSH, name, reference, str(digest), () if tag is None else (tag,), actor
            ),
            parsed.media_type,
            content,
        )
        outbox = events.push_statements(record, tag, actor, None)
        await ctx.db.put_manifest(record, references, tag, outbox)
        await ctx.policy.pushed(check)
        await record_library_push(
            ctx.db,
            ctx.store,
            check.policy.library,
            name,
            str(digest),
            content,
            tag,
            events.library_moved(actor),
            check.lineage,
        )
    ctx.policy.evidence_changed(name)
    events.committed()
    if await signature_pushed(ctx.db, ctx.store, ctx.policy.policy, name, content, tag):
        await ctx.policy.evidence_arrived(name)
    return record
