"""Images pushed before their base entered the library get their lineage when it does: the
library tag's new digest re-traces the images that had no base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from policies.library import recording
from policies.library.importer import import_image
from registry.context import CONTEXT
from tests.library.images import Image, layer_tar, push, write_oci_layout

PY_LAYERS = [layer_tar(f"python-{i}") for i in range(3)]
PYTHON = Image(PY_LAYERS)
PYTHON_PATCHED = Image([*PY_LAYERS[:2], layer_tar("python-2-patched")])
# `team/**` is outside the `base_image` rule: an image there may be pushed before its base.
APP = Image([*PY_LAYERS, layer_tar("app")])
UNRELATED = Image([layer_tar("other-0"), layer_tar("other-1")])


async def consumers(client: TestClient) -> list[tuple[Any, ...]]:
    resp = await client.get("/api/v1/library/python/3.12-slim/consumers")
    assert resp.status == 200, await resp.text()
    return [
        (c["repository"], c["tag"], c["base_digest"], c["current"])
        for c in (await resp.json())["consumers"]
    ]


async def lineage_repositories(client: TestClient) -> list[str]:
    rows = await client.server.app[CONTEXT].db.read(
        "SELECT DISTINCT repository FROM image_lineage ORDER BY repository"
    )
    return [row[0] for row in rows]


async def push_early_images(client: TestClient, app: Image = APP) -> None:
    for name, image in (("team/web", app), ("team/other", UNRELATED)):
        resp = await push(client, name, "v1", image)
        assert resp.status == 201, await resp.text()
    assert await lineage_repositories(client) == []


async def test_a_base_pushed_after_its_app_records_the_apps_lineage(
    registry: TestClient,
) -> None:
    await push_early_images(registry)
    assert (await push(registry, "library/python", "3.12-slim", PYTHON)).status == 201
    assert await consumers(registry) == [("team/web", "v1", PYTHON.digest, True)]
    assert await lineage_repositories(registry) == ["team/web"]  # not the unrelated image

    # Ops roll out a patched base: the app found late is stale like any other.
    assert (await push(registry, "library/python", "3.12-slim", PYTHON_PATCHED)).status == 201
    assert await consumers(registry) == [("team/web", "v1", PYTHON.digest, False)]
    stale = await (await registry.get("/api/v1/library")).json()
    slim = stale["images"][0]["tags"][0]
    assert (slim["consumers"], slim["stale_consumers"]) == (1, 1)


async def test_an_imported_base_records_its_recompressed_apps_lineage(
    registry: TestClient, tmp_path: Path
) -> None:
    # Recompressed on the way: only the diff_ids tell it is built on the base.
    await push_early_images(registry, Image([*PY_LAYERS, layer_tar("app")], compress=False))
    ctx = registry.server.app[CONTEXT]
    write_oci_layout(tmp_path / "layout", [PYTHON])
    await import_image(
        ctx.db, ctx.store, ctx.policy.policy.library, tmp_path / "layout", "python:3.12-slim"
    )
    assert await consumers(registry) == [("team/web", "v1", PYTHON.digest, True)]
    assert await lineage_repositories(registry) == ["team/web"]
    # Once placed, an image is no longer among those a new library digest re-traces.
    rows = await ctx.db.read("SELECT DISTINCT repository FROM images_without_base")
    assert "team/web" not in {row[0] for row in rows}
    assert "team/other" in {row[0] for row in rows}


async def test_a_move_re_traces_a_bounded_number_of_images(
    registry: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(3):
        app = Image([*PY_LAYERS, layer_tar(f"app-{n}")])
        assert (await push(registry, f"team/app{n}", "v1", app)).status == 201
    monkeypatch.setattr(recording, "RETRACE_LIMIT", 2)
    assert (await push(registry, "library/python", "3.12-slim", PYTHON)).status == 201
    assert await lineage_repositories(registry) == ["team/app0", "team/app1"]
    assert "more than 2 images without a base" in caplog.text
