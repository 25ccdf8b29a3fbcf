"""`trustyard backup DIR` and `restore DIR`: a consistent database snapshot, then its blobs.

The backup runs while the registry serves; the restored data directory serves the same
manifests and blobs byte for byte; a damaged backup is refused before anything is written.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from tests.conftest import make_config
from tests.oci import push_image, sha256
from tests.operations.cli import one_line, trustyard

# `backup` and `restore` copy the SQLite data directory; on PostgreSQL they refuse and point at
# pg_dump (tests/storage/test_metadata_migrate.py::test_backup_refuses_a_postgresql_registry).
pytestmark = pytest.mark.sqlite_only


async def _pushed(start_client) -> tuple[object, dict[str, bytes]]:
    client = await start_client()
    layers = [os.urandom(300_000), b"second layer"]
    digest, body = await push_image(client, "app/web", "v1", layers=layers)
    await push_image(client, "tools/x", "1")
    return client, {
        "digest": digest.encode(),
        "manifest": body,
        **{f"layer{i}": layer for i, layer in enumerate(layers)},
    }


async def test_backup_while_serving_then_restore_serves_the_same_bytes(
    start_client, aiohttp_client, data_dir, tmp_path
):
    client, pushed = await _pushed(start_client)
    backup = tmp_path / "backup"
    result = await asyncio.to_thread(
        trustyard, "backup", str(backup), "--data-dir", str(data_dir), "--json"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["blobs"] == 5  # two configs, three layers
    assert summary["blob_bytes"] > 300_000
    # The registry kept serving while the backup ran.
    assert (await client.get("/v2/app/web/manifests/v1")).status == 200

    restored = tmp_path / "restored"
    result = await asyncio.to_thread(trustyard, "restore", str(backup), "--data-dir", str(restored))
    assert result.returncode == 0, result.stderr
    assert f"restored {backup} into {restored}: " in result.stdout

    from registry.app import create_app

    again = await aiohttp_client(create_app(make_config(restored)))
    manifest = await again.get(
        "/v2/app/web/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert manifest.status == 200
    assert await manifest.read() == pushed["manifest"]
    assert manifest.headers["Docker-Content-Digest"] == pushed["digest"].decode()
    for name in ("layer0", "layer1"):
        blob = await again.get(f"/v2/app/web/blobs/{sha256(pushed[name])}")
        assert blob.status == 200
        assert await blob.read() == pushed[name]
    catalog = await (await again.get("/v2/_catalog")).json()
    assert catalog["repositories"] == ["app/web", "tools/x"]


async def test_a_damaged_backup_is_refused_before_anything_is_written(
    start_client, data_dir, tmp_path
):
    _, pushed = await _pushed(start_client)
    backup = tmp_path / "backup"
    assert (
        await asyncio.to_thread(trustyard, "backup", str(backup), "--data-dir", str(data_dir))
    ).returncode == 0
    digest = sha256(pushed["layer1"])
    damaged = backup / "blobs" / "sha256" / digest[7:9] / digest[7:]
    damaged.write_bytes(b"not the layer")
    restored = tmp_path / "restored"
    result = await asyncio.to_thread(trustyard, "restore", str(backup), "--data-dir", str(restored))
    assert result.returncode == 2
    assert (
        one_line(result)
        == f"trustyard: blob {digest} in {backup} is damaged (digest or size differs)"
    )
    assert not restored.exists()
    damaged.unlink()
    result = await asyncio.to_thread(trustyard, "restore", str(backup), "--data-dir", str(restored))
    assert result.returncode == 2
    assert one_line(result) == (
        f"trustyard: blob {digest} named by the database is missing from {backup}"
    )


async def test_backup_and_restore_refuse_to_overwrite(start_client, data_dir, tmp_path):
    await _pushed(start_client)
    folder = tmp_path / "backup"
    folder.mkdir()
    (folder / "something").write_text("x")
    result = await asyncio.to_thread(trustyard, "backup", str(folder), "--data-dir", str(data_dir))
    assert result.returncode == 2
    assert "exists and is not empty" in one_line(result)
    result = await asyncio.to_thread(trustyard, "restore", str(folder), "--data-dir", str(data_dir))
    assert result.returncode == 2
    assert one_line(result) == (
        f"trustyard: data directory {data_dir} exists and is not empty: restore into a new one"
    )


def test_restore_of_a_folder_that_is_no_backup(tmp_path: Path):
    (tmp_path / "nothing").mkdir()
    result = trustyard("restore", str(tmp_path / "nothing"), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert "is not a Trustyard backup (no trustyard-backup.json)" in one_line(result)
    assert not (tmp_path / "d").exists()


async def test_progress_shows_on_a_terminal_only(start_client, data_dir, tmp_path):
    import pty
    import subprocess
    import sys

    from tests.operations.cli import ROOT

    await _pushed(start_client)
    piped = await asyncio.to_thread(
        trustyard, "backup", str(tmp_path / "piped"), "--data-dir", str(data_dir)
    )
    assert piped.returncode == 0
    assert piped.stderr == ""  # redirected output carries no progress noise

    def on_a_terminal() -> tuple[int, str]:
        controller, terminal = pty.openpty()
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "registry", "backup"),
                *(str(tmp_path / "tty"), "--data-dir", str(data_dir)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            cwd=ROOT,
        )
        os.close(terminal)
        output = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the command is done
                break
            if not chunk:
                break
            output += chunk
        os.close(controller)
        return process.wait(timeout=60), output.decode(errors="replace")

    code, shown = await asyncio.to_thread(on_a_terminal)
    assert code == 0
    assert "backup: blobs: 5/5 (100%)" in shown


def test_terminal_progress_draws_one_line():
    import io

    from registry.progress import terminal_progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    show = terminal_progress("library import: bytes", out)
    assert show is not None
    show(0, 200)
    show(200, 200)
    assert out.getvalue().endswith("\rlibrary import: bytes: 200/200 (100%)\n")
    assert terminal_progress("x", io.StringIO()) is None
