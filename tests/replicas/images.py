"""What the replica tests push: a policy making release tags immutable, and distinct images."""

from __future__ import annotations

import json

import aiohttp

from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor, push_blob

IMMUTABLE_RELEASES = """\
version: 1
default: allow
rules:
  - name: release tags are immutable
    match: {repositories: ["**"], tags: ["v*"], on: [push, delete]}
    require: {immutable_tags: true}
"""

#: The same, with the library declaring `library/base:v1`: a push to a declared library tag
#: still holds the tag's lock in the metadata database from its check to its commit.
LIBRARY_RELEASES = (
    IMMUTABLE_RELEASES
    + """\
library:
  namespace: library
  images:
    - name: base
      tags: ["v1"]
"""
)


async def image_manifest(session: aiohttp.ClientSession, name: str, n: int, label: str) -> bytes:
    """A distinct image manifest (`label` and `n` make its layer) whose blobs are stored in
    `name`."""
    config = json.dumps({"os": "linux", "architecture": "amd64", "n": n}).encode()
    layer = f"{label}-layer-{n}".encode()
    await push_blob(session, name, config)  # type: ignore[arg-type]
    await push_blob(session, name, layer)  # type: ignore[arg-type]
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer)],
        }
    ).encode()
