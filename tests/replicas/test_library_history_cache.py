"""A push is traced and decided against the library's history as every replica committed it.

Each process remembers the library history it last read (pushes then read nothing of it); a
push's store checks, in its own transaction, that the history's generation has not moved since
(`put_manifest(library_generation=...)`), and a push that would be refused is decided again on
the history read now. So a library tag moved through replica A is seen by the next push
through replica B, the moment A answered 201: B never stores a lineage, nor lets through or
refuses an image, on the history A's move replaced.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from storage.layout import DataLayout
from storage.metadata import open_metadata
from tests.library.images import Image, layer_tar, push
from tests.replicas.conftest import Replicas, StartReplicas

#: Builds on `library/base:v1` are refused as soon as the tag moves on (`max_behind: 0s`), and
#: images in `apps/` must be built on it; `tools/` has no rule (its lineage is only recorded).
POLICY = """\
version: 1
default: allow
library:
  namespace: library
  images:
    - name: base
      tags: ["v1"]
rules:
  - name: apps build on the current base
    match: {repositories: ["apps/**"], on: [push]}
    require:
      base_image: {from_library: true, max_behind: 0s}
"""

BASE = [layer_tar("base-0"), layer_tar("base-1")]
FIRST = Image(BASE)
SECOND = Image([BASE[0], layer_tar("base-1-patched")])
THIRD = Image([BASE[0], layer_tar("base-1-patched-again")])


async def _lineage(replicas: Replicas, repository: str, image: Image) -> list[tuple[str, bool]]:
    """(base digest, current) of each platform of `repository@image` as recorded."""
    db = await open_metadata(DataLayout(replicas.data_dir).database, replicas.metadata_url)
    try:
        rows = await db.lineage_of(repository, image.digest)
    finally:
        await db.close()
    return [(row.base_digest, row.current) for row in rows]


async def _status(session: aiohttp.ClientSession, name: str, tag: str, image: Image) -> int:
    resp = await push(session, name, tag, image)  # type: ignore[arg-type]
    async with resp:
        return int(resp.status)


@pytest.mark.parametrize("metadata_url", ["sqlite", "postgresql"], indirect=True)
async def test_a_library_tag_moved_on_one_replica_is_seen_by_the_next_push_on_another(
    start_replicas: StartReplicas, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    replicas = start_replicas("--policy", str(policy))
    async with (
        aiohttp.ClientSession(base_url=replicas.a.url) as a,
        aiohttp.ClientSession(base_url=replicas.b.url) as b,
    ):
        assert await _status(a, "library/base", "v1", FIRST) == 201
        # B reads (and from now on remembers) the history: v1 is FIRST.
        on_first = Image([*BASE, layer_tar("app-1")])
        assert await _status(b, "apps/web", "one", on_first) == 201
        assert await _lineage(replicas, "apps/web", on_first) == [(FIRST.digest, True)]

        # v1 moves on through A. B's next push, traced against what B remembered, would find
        # no base for an image on SECOND: its store finds the history moved and it is traced
        # again.
        assert await _status(a, "library/base", "v1", SECOND) == 201
        tool = Image([*SECOND.layers, layer_tar("tool")])
        assert await _status(b, "tools/cli", "one", tool) == 201
        assert await _lineage(replicas, "tools/cli", tool) == [(SECOND.digest, True)]

        # v1 moves on again: an image on SECOND, which B remembers as v1's current digest,
        # is behind now and refused (remembered, it would have been let through).
        assert await _status(a, "library/base", "v1", THIRD) == 201
        behind = Image([*SECOND.layers, layer_tar("app-2")])
        assert await _status(b, "apps/web", "two", behind) == 403
        assert await _lineage(replicas, "apps/web", behind) == []

        # And an image on a digest B has not heard of is not refused for that: decided again
        # on the history read now, it is on v1's current digest.
        fourth = Image([BASE[0], layer_tar("base-1-fourth")])
        assert await _status(a, "library/base", "v1", fourth) == 201
        on_fourth = Image([*fourth.layers, layer_tar("app-3")])
        assert await _status(b, "apps/web", "three", on_fourth) == 201
        assert await _lineage(replicas, "apps/web", on_fourth) == [(fourth.digest, True)]
        # The first app is on a replaced base now (its flag moved with the tag).
        assert await _lineage(replicas, "apps/web", on_first) == [(FIRST.digest, False)]
