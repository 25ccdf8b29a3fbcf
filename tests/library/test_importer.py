"""`library import`: OCI layouts (directory or tar, image or index) and docker save tarballs,
checked, digests preserved, written through the registry's storage."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from policies.library.history import tag_history
from policies.library.importer import LibraryImportError, import_image
from registry.cli import main
from registry.context import CONTEXT
from storage.layout import DataLayout
from storage.metadata import open_metadata
from tests.conftest import registry_metadata_url
from tests.library.images import (
    Image,
    layer_tar,
    sha256,
    tar_directory,
    write_docker_save,
    write_oci_layout,
)

BASE = Image([layer_tar("base-1"), layer_tar("base-2")])


async def run_import(client: TestClient, path: Path, reference: str) -> str:
    ctx = client.server.app[CONTEXT]
    result = await import_image(ctx.db, ctx.store, ctx.policy.policy.library, path, reference)
    return result.digest


async def test_an_oci_layout_is_imported_with_its_digest(
    registry: TestClient, tmp_path: Path
) -> None:
    top = write_oci_layout(tmp_path / "layout", [BASE])
    assert await run_import(registry, tmp_path / "layout", "python:3.12-slim") == top
    resp = await registry.get("/v2/library/python/manifests/3.12-slim")
    assert resp.status == 200
    assert resp.headers["Docker-Content-Digest"] == BASE.digest
    for blob in BASE.blobs():
        assert (await registry.head(f"/v2/library/python/blobs/{sha256(blob)}")).status == 200
    history = await tag_history(registry.server.app[CONTEXT].db)
    assert [(h.name, h.tag, h.digest, h.current) for h in history] == [
        ("python", "3.12-slim", BASE.digest, True)
    ]


async def test_a_multi_platform_index_in_a_tar_is_kept_whole(
    registry: TestClient, tmp_path: Path
) -> None:
    arm = Image([layer_tar("arm-1")], architecture="arm64")
    top = write_oci_layout(tmp_path / "layout", [BASE, arm], as_index=True)
    tarball = tar_directory(tmp_path / "layout", tmp_path / "layout.tar")
    assert await run_import(registry, tarball, "python:3.13-slim") == top
    resp = await registry.get("/v2/library/python/manifests/3.13-slim")
    assert resp.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    for child in (BASE, arm):
        assert (await registry.get(f"/v2/library/python/manifests/{child.digest}")).status == 200


async def test_a_docker_save_tarball_keeps_config_and_layer_digests(
    registry: TestClient, tmp_path: Path
) -> None:
    image = Image([layer_tar("saved-1"), layer_tar("saved-2")], compress=False)
    tarball = write_docker_save(tmp_path / "saved.tar", image)
    digest = await run_import(registry, tarball, "distroless/static:nonroot")
    # No manifest in an old docker save: one is written around the saved config and layers.
    resp = await registry.get("/v2/library/distroless/static/manifests/nonroot")
    assert resp.status == 200 and resp.headers["Docker-Content-Digest"] == digest
    manifest = json.loads(await resp.read())
    assert manifest["config"]["digest"] == sha256(image.config)
    assert [layer["digest"] for layer in manifest["layers"]] == image.diff_ids


async def test_a_corrupt_blob_is_refused_and_the_tag_does_not_move(
    registry: TestClient, tmp_path: Path
) -> None:
    write_oci_layout(tmp_path / "layout", [BASE])
    layer = tmp_path / "layout" / "blobs" / "sha256" / sha256(BASE.stored_layers()[1]).split(":")[1]
    layer.write_bytes(b"tampered")
    with pytest.raises(LibraryImportError, match=r"layer .*content is sha256:.*expected"):
        await run_import(registry, tmp_path / "layout", "python:3.12-slim")
    assert (await registry.get("/v2/library/python/manifests/3.12-slim")).status == 404


async def test_a_docker_save_layer_must_match_its_diff_id(
    registry: TestClient, tmp_path: Path
) -> None:
    image = Image([layer_tar("one")], compress=False)
    tarball = write_docker_save(tmp_path / "saved.tar", image)
    wrong = Image([layer_tar("two")], compress=False)
    # Same layer name, other content: the config's diff_id no longer matches.
    write_docker_save(tmp_path / "wrong.tar", wrong)
    with tarfile.open(tarball) as good, tarfile.open(tmp_path / "mixed.tar", "w") as mixed:
        for member in good.getmembers():
            data = good.extractfile(member)
            if member.name.endswith("layer.tar"):
                content = wrong.layers[0]
                member.size = len(content)
                data = io.BytesIO(content)
            mixed.addfile(member, data)
    with pytest.raises(LibraryImportError, match="expected sha256:"):
        await run_import(registry, tmp_path / "mixed.tar", "python:3.12-slim")


async def test_an_undeclared_tag_or_unknown_format_is_refused(
    registry: TestClient, tmp_path: Path
) -> None:
    write_oci_layout(tmp_path / "layout", [BASE])
    with pytest.raises(LibraryImportError, match="not declared in the library"):
        await run_import(registry, tmp_path / "layout", "python:2.7")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LibraryImportError, match="neither an OCI image layout"):
        await run_import(registry, tmp_path / "empty", "python:3.12-slim")


async def _create_database(data: Path) -> None:
    # A registry's data directory (the blobs live there on either backend) and its database.
    data.mkdir(parents=True, exist_ok=True)
    db = await open_metadata(DataLayout(data).database, registry_metadata_url())
    await db.close()


def test_the_command_imports_and_reports(
    tmp_path: Path, policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    top = write_oci_layout(tmp_path / "layout", [BASE])
    data = tmp_path / "data"
    argv = ["library", "import", str(tmp_path / "layout"), "--as", "python:3.12-slim"]
    argv += ["--data-dir", str(data), "--policy", str(policy_file)]
    # Into a data directory that does not exist: refused, nothing created (a typo or the wrong
    # folder must not start a second, empty registry).
    assert main(argv) == 2
    assert f"data directory {data} does not exist" in capsys.readouterr().err
    assert not data.exists()
    asyncio.run(_create_database(data))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"imported library/python:3.12-slim = {top}" in out
    assert "3 blobs added" in out
    # Again: nothing new, the tag does not move.
    assert main(argv) == 0
    assert "already pointed to" in capsys.readouterr().out
    assert main([*argv[:4], "python:9", *argv[5:]]) == 1
    assert "not declared" in capsys.readouterr().err
