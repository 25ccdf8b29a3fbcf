"""Referrers: `GET /v2/<name>/referrers/<digest>` (spec: "Listing referrers")."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from registry.context import context
from registry.query import single
from storage.oci.digests import parse_digest
from storage.oci.errors import QUERY_INVALID
from storage.oci.media_types import OCI_INDEX


async def list_referrers(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    """An OCI index of the manifests whose subject is `<digest>`; never 404 for a valid digest."""
    ctx = context(request)
    subject = parse_digest(reference)
    wanted = single(request, "artifactType", QUERY_INVALID)
    descriptors: list[dict[str, Any]] = []
    for referrer in await ctx.db.referrers(name, str(subject)):
        if wanted is not None and referrer.artifact_type != wanted:
            continue
        descriptor: dict[str, Any] = {
            "mediaType": referrer.media_type,
            "digest": referrer.digest,
            "size": referrer.size,
        }
        if referrer.artifact_type is not None:
            descriptor["artifactType"] = referrer.artifact_type
        if referrer.annotations:
            descriptor["annotations"] = referrer.annotations
        descriptors.append(descriptor)
    headers = {"OCI-Filters-Applied": "artifactType"} if wanted is not None else {}
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    return web.Response(body=json.dumps(body).encode(), content_type=OCI_INDEX, headers=headers)
