"""Storing a manifest pulled from upstream: the one way proxied manifests enter the registry.

A proxied manifest is pushed through the manifest pipeline (`registry.pipeline`), as the actor
`proxy:<upstream>`: the same parser (ambiguous or malformed documents refused), signature
limits, policy check, event outbox in the storing transaction (`image.pushed`, so scanners see
new proxied digests), decision log, library records and signature proofs as a push. The one
difference: what it references need not be here yet (blobs are fetched when a client asks for
them); the references still protect their targets from garbage collection.
`parse_pulled` reads it first the same way, to learn what the policy will need fetched.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from policies.signatures.proofs import push_problem
from registry.context import CONTEXT, PIPELINE
from registry.errors import MANIFEST_INVALID, RegistryError
from registry.pipeline.push import ManifestPush
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
    content_type: str | None,
    digest: Digest,
    upstream_name: str,
) -> None:
    """Check, store and announce a manifest the upstream served for `name` (tagged `tag`),
    through the manifest pipeline exactly as a push of it would be (`PolicyDenied` when the
    policy refuses it: nothing stored); what it references is fetched when asked for."""
    await app[PIPELINE].push(
        ManifestPush(
            repository=name,
            reference=tag if tag is not None else str(digest),
            content=content,
            content_type=content_type,
            actor=actor_of(upstream_name),
            references_fetched_later=True,
        )
    )
