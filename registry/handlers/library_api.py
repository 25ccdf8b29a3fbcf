"""Trustyard's API about the base-image library (not part of the OCI spec), under `/api/v1/`:

- `GET /api/v1/library`: the declared images and tags, each tag's current digest, its history,
  deprecation, and how many images are built on it (and how many of them on an old digest).
- `GET /api/v1/library/{name}/{tag}/consumers`: the tagged images built on a library tag, with
  whether each is on the tag's current digest and how long ago its base was replaced.

Registry administrators only once auth is on (the `/api/` prefix, `registry.auth.middleware`).
"""

from __future__ import annotations

import time

from aiohttp import web

from policies.library.reports import consumers, overview
from registry.context import context
from registry.errors import RegistryError
from registry.path_parameters import path_parameter
from storage.oci.errors import NAME_UNKNOWN


async def library_overview(request: web.Request) -> web.StreamResponse:
    """`GET /api/v1/library`."""
    ctx = context(request)
    return web.json_response(await overview(ctx.db, ctx.policy.policy.library))


async def library_consumers(request: web.Request) -> web.StreamResponse:
    """`GET /api/v1/library/{name}/{tag}/consumers`."""
    ctx = context(request)
    name, tag = path_parameter(request, "name"), path_parameter(request, "tag")
    library = ctx.policy.policy.library
    if library is None or not library.declares(name, tag):
        raise RegistryError(
            NAME_UNKNOWN,
            {"name": name, "tag": tag},
            message=f"{name}:{tag} is not a declared library tag",
        )
    now = time.time()
    found = await consumers(ctx.db, name, tag)
    return web.json_response(
        {
            "name": name,
            "tag": tag,
            "repository": library.repository(name),
            "consumers": [c.as_json(now) for c in found],
        }
    )
