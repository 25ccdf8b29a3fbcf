"""Through the API: pushes record tag history and lineage, the base_image rule refuses with a
precise reason, and the reports list consumers and the rebuild list."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from policies import facts
from policies.library import recording
from policies.library.history import tag_history
from policies.library.recording import trace_lineage
from policies.loader import parse_policy
from registry.cli import main
from registry.context import CONTEXT
from storage.metadata.library import LIBRARY_GENERATION
from storage.metadata.sqlite.connection import bump_generation
from tests.library.conftest import POLICY
from tests.library.images import Image, layer_tar, push, push_index

PY_LAYERS = [layer_tar(f"python-{i}") for i in range(5)]
PYTHON = Image(PY_LAYERS)
PYTHON_PATCHED = Image([*PY_LAYERS[:4], layer_tar("python-4-patched")])
DISTROLESS = Image([layer_tar("static-0")])


async def denial(resp: Any) -> str:
    assert resp.status == 403, await resp.text()
    return (await resp.json())["errors"][0]["message"]


async def lineage_rows(client: TestClient) -> list[tuple[Any, ...]]:
    return [
        tuple(row)
        for row in await client.server.app[CONTEXT].db.read(
            "SELECT repository, platform, library_name, library_tag, base_digest, current "
            "FROM image_lineage ORDER BY repository, platform"
        )
    ]


async def test_an_app_on_the_library_is_allowed_and_its_lineage_recorded(
    registry: TestClient,
) -> None:
    assert (await push(registry, "library/python", "3.12-slim", PYTHON)).status == 201
    # Recompressed on the way: the layer digests differ, the diff_ids do not.
    app = Image([*PY_LAYERS, layer_tar("app")], compress=False)
    resp = await push(registry, "apps/web", "v1", app)
    assert resp.status == 201, await resp.text()
    assert await lineage_rows(registry) == [
        ("apps/web", "linux/amd64", "python", "3.12-slim", PYTHON.digest, 1)
    ]
    history = await tag_history(registry.server.app[CONTEXT].db)
    assert [(h.name, h.tag, h.digest) for h in history] == [("python", "3.12-slim", PYTHON.digest)]


async def test_a_push_traces_its_lineage_once(
    registry: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await push(registry, "library/python", "3.12-slim", PYTHON)
    traced: list[str] = []

    async def counting(*args: Any, **kwargs: Any) -> Any:
        traced.append(args[2])
        return await trace_lineage(*args, **kwargs)

    monkeypatch.setattr(facts, "trace_lineage", counting)
    monkeypatch.setattr(recording, "trace_lineage", counting)
    # The base_image rule traced it to decide; recording the push reuses that.
    assert (await push(registry, "apps/web", "v1", Image([*PY_LAYERS, b"app"]))).status == 201
    assert traced == ["apps/web"]
    assert [r[:4] for r in await lineage_rows(registry)] == [
        ("apps/web", "linux/amd64", "python", "3.12-slim")
    ]


async def test_an_app_on_no_library_image_is_refused_naming_the_closest(
    registry: TestClient,
) -> None:
    await push(registry, "library/python", "3.12-slim", PYTHON)
    resp = await push(registry, "apps/scratch", "v1", Image([layer_tar("mine")]))
    assert await denial(resp) == (
        'rule "apps build on the library": image is not built on a library image '
        "(closest: python:3.12-slim shares 0 of 5 layers)"
    )
    assert (await registry.get("/v2/apps/scratch/manifests/v1")).status == 404


async def test_an_undeclared_tag_is_not_a_base(registry: TestClient) -> None:
    await push(registry, "library/python", "nightly", PYTHON)  # not declared: no history
    resp = await push(registry, "apps/web", "v1", Image([*PY_LAYERS, layer_tar("app")]))
    assert "the library holds no image to build on" in await denial(resp)


async def test_an_index_is_checked_per_platform(registry: TestClient) -> None:
    arm_python = Image([layer_tar("py-arm")], architecture="arm64")
    resp = await push_index(registry, "library/python", "3.13-slim", [PYTHON, arm_python])
    assert resp.status == 201
    good_amd = Image([*PY_LAYERS, layer_tar("a")])
    good_arm = Image([layer_tar("py-arm"), layer_tar("a")], architecture="arm64")
    assert (await push_index(registry, "apps/multi", "v1", [good_amd, good_arm])).status == 201
    platforms = [row[1] for row in await lineage_rows(registry) if row[0] == "apps/multi"]
    # One row per platform for the index, and one for each child pushed by digest.
    assert platforms.count("linux/amd64") == 2 and platforms.count("linux/arm64") == 2
    bad_arm = Image([layer_tar("elsewhere")], architecture="arm64")
    # Pushed by digest, a child is checked on its own.
    assert "image is not built" in await denial(await push(registry, "apps/multi", "x", bad_arm))
    # With a rule about tags only, the index names the platform that is not on the library.
    gate = registry.server.app[CONTEXT].policy
    gate.policy = parse_policy(POLICY.replace("on: [push]}", 'tags: ["v*"], on: [push]}'))
    resp = await push_index(registry, "apps/multi", "v2", [good_amd, bad_arm])
    assert await denial(resp) == (
        'rule "apps build on the library": image (linux/arm64) is not built on a library image '
        "(closest: python:3.13-slim shares 0 of 1 layers)"
    )


async def test_a_base_replaced_too_long_ago_must_be_rebuilt(registry: TestClient) -> None:
    db = registry.server.app[CONTEXT].db
    await push(registry, "library/python", "3.12-slim", PYTHON)
    app = Image([*PY_LAYERS, layer_tar("app")])
    assert (await push(registry, "apps/web", "v1", app)).status == 201
    # Ops roll out a patched base: the app is now stale.
    assert (await push(registry, "library/python", "3.12-slim", PYTHON_PATCHED)).status == 201
    assert [r[5] for r in await lineage_rows(registry) if r[0] == "apps/web"] == [0]
    # Within max_behind a rebuild is not yet due: a new app on the old base is still accepted.
    again = Image([*PY_LAYERS, layer_tar("app-2")])
    assert (await push(registry, "apps/web", "v2", again)).status == 201
    async with db.transaction() as conn:
        await conn.execute(
            "UPDATE library_tag_history SET until = ? WHERE until IS NOT NULL",
            (time.time() - 41 * 86400,),
        )
        # As every change of the history does: pushes traced against the old one re-trace.
        await bump_generation(conn, LIBRARY_GENERATION)
    late = Image([*PY_LAYERS, layer_tar("app-3")])
    message = await denial(await push(registry, "apps/web", "v3", late))
    assert message == (
        f'rule "apps build on the library": image is built on python:3.12-slim@'
        f"{PYTHON.digest[:19]}… which was replaced 41 days ago (max_behind 30d); rebuild"
    )
    rebuilt = Image([*PYTHON_PATCHED.layers, layer_tar("app-3")])
    assert (await push(registry, "apps/web", "v3", rebuilt)).status == 201


async def test_a_deprecated_base_is_refused(registry: TestClient) -> None:
    await push(registry, "library/old", "1", DISTROLESS)
    message = await denial(
        await push(registry, "apps/legacy", "v1", Image([*DISTROLESS.layers, b"x"]))
    )
    assert "is built on old:1, deprecated since 2020-01-01 (supported_until)" in message


async def test_the_nearest_library_base_is_recorded(registry: TestClient) -> None:
    await push(registry, "library/distroless/static", "nonroot", DISTROLESS)
    python_on_static = Image([*DISTROLESS.layers, layer_tar("py")])
    await push(registry, "library/python", "3.12-slim", python_on_static)
    await push(registry, "apps/web", "v1", Image([*python_on_static.layers, layer_tar("app")]))
    rows = {row[0]: row[2] for row in await lineage_rows(registry)}
    assert rows == {"apps/web": "python", "library/python": "distroless/static"}


async def test_reports_list_images_consumers_and_the_rebuild_list(
    registry: TestClient, policy_file: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await push(registry, "library/python", "3.12-slim", PYTHON)
    await push(registry, "apps/web", "v1", Image([*PY_LAYERS, layer_tar("app")]))
    await push(registry, "library/python", "3.12-slim", PYTHON_PATCHED)
    await push(registry, "apps/api", "v1", Image([*PYTHON_PATCHED.layers, layer_tar("api")]))

    body = await (await registry.get("/api/v1/library")).json()
    python = next(i for i in body["images"] if i["name"] == "python")
    assert python["repository"] == "library/python" and python["deprecated"] is False
    slim = next(t for t in python["tags"] if t["tag"] == "3.12-slim")
    assert slim["digest"] == PYTHON_PATCHED.digest
    assert [h["digest"] for h in slim["history"]] == [PYTHON_PATCHED.digest, PYTHON.digest]
    assert (slim["consumers"], slim["stale_consumers"]) == (2, 1)
    old = next(i for i in body["images"] if i["name"] == "old")
    assert old["deprecated"] is True

    resp = await registry.get("/api/v1/library/python/3.12-slim/consumers")
    consumers = (await resp.json())["consumers"]
    assert [(c["repository"], c["tag"], c["current"]) for c in consumers] == [
        ("apps/api", "v1", True),
        ("apps/web", "v1", False),
    ]
    assert consumers[1]["current_digest"] == PYTHON_PATCHED.digest
    assert (await registry.get("/api/v1/library/python/2.7/consumers")).status == 404

    argv = ["library", "stale", "--data-dir", str(data_dir), "--policy", str(policy_file)]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["REPOSITORY", "TAG", "DIGEST", "BASE", "BEHIND"]
    assert out[1].startswith("apps/web") and "python:3.12-slim@" in out[1]
    assert len(out) == 2
    assert await asyncio.to_thread(main, [*argv, "--json"]) == 0
    assert '"repository": "apps/web"' in capsys.readouterr().out


async def test_deleting_a_library_tag_ends_its_history(registry: TestClient) -> None:
    db = registry.server.app[CONTEXT].db
    await push(registry, "library/python", "3.12-slim", PYTHON)
    await push(registry, "library/python", "3.13-slim", PYTHON_PATCHED)
    await push(registry, "apps/web", "v1", Image([*PY_LAYERS, layer_tar("app")]))
    assert (await registry.delete("/v2/library/python/manifests/3.12-slim")).status == 202
    [slim] = await tag_history(db, "python", "3.12-slim")
    assert slim.digest == PYTHON.digest and slim.until is not None
    # The images built on it are on the rebuild list; the other tag is untouched.
    assert [r[5] for r in await lineage_rows(registry) if r[0] == "apps/web"] == [0]
    [newer] = await tag_history(db, "python", "3.13-slim")
    assert newer.current
    body = await (await registry.get("/api/v1/library")).json()
    python = next(i for i in body["images"] if i["name"] == "python")
    assert [t["digest"] for t in python["tags"]] == [None, PYTHON_PATCHED.digest]
    # Deleting a manifest by digest ends every library tag pointing at it.
    resp = await registry.delete(f"/v2/library/python/manifests/{PYTHON_PATCHED.digest}")
    assert resp.status == 202
    assert not any(h.current for h in await tag_history(db, "python"))
    # Pushing the tag again starts a new period.
    await push(registry, "library/python", "3.12-slim", PYTHON)
    periods = await tag_history(db, "python", "3.12-slim")
    assert [(p.digest, p.current) for p in periods] == [
        (PYTHON.digest, False),
        (PYTHON.digest, True),
    ]
