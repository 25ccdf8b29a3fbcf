"""`trustyard gc --dry-run` prints exactly what the real run then removes, cascade included."""

from __future__ import annotations

import asyncio
import json

from tests.oci import OCI_MANIFEST, push_blob
from tests.storage.gc_helpers import image, index_of, put_manifest
from tests.storage.test_blob_integrity import config_file, trustyard


async def test_dry_run_follows_the_cascade_and_matches_the_real_run(registry, tmp_path):
    client = registry.client
    # An untagged index whose two children only it names, one child with a referrer.
    children = []
    for name in ("amd64", "arm64"):
        status, digest, body = await put_manifest(client, "app", await image(client, "app", name))
        assert status == 201
        children.append((digest, body))
    assert (await put_manifest(client, "app", index_of(*children)))[0] == 201
    signature = await image(client, "app", "signature of amd64")
    signature["subject"] = {
        "mediaType": OCI_MANIFEST,
        "digest": children[0][0],
        "size": len(children[0][1]),
    }
    assert (await put_manifest(client, "app", signature))[0] == 201
    # A tag moved on, and a blob nothing names.
    await put_manifest(client, "app", await image(client, "app", "old"), reference="latest")
    await put_manifest(client, "app", await image(client, "app", "new"), reference="latest")
    await push_blob(client, "app", b"loose")
    config = config_file(registry, tmp_path)

    dry = trustyard(
        registry.data_dir, "gc", "--dry-run", "--json", "--grace-period", "0s", config=config
    )
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] is True
    # index, both children, the referrer, the old image: 5 manifests in three rounds.
    assert len(planned["manifests"]) == 5
    # Their configs and layers (2 each, 4 images) and the loose blob.
    assert len(planned["blobs"]) == 9

    real = trustyard(registry.data_dir, "gc", "--json", "--grace-period", "0s", config=config)
    assert real.returncode == 0, real.stderr
    done = json.loads(real.stdout)
    assert done["dry_run"] is False
    for key in ("manifests", "blobs", "orphan_files", "uploads", "bytes_freed"):
        assert done[key] == planned[key], key

    # The human output says the same, line for line.
    again = trustyard(registry.data_dir, "gc", "--dry-run", "--grace-period", "0s", config=config)
    assert again.stdout.strip() == "dry run: 0 manifests, 0 blobs (0 bytes), 0 uploads"
    assert (await client.get("/v2/app/manifests/latest")).status == 200


async def test_gc_shows_progress_on_a_terminal_only(registry, tmp_path):
    import os
    import pty
    import subprocess
    import sys

    client = registry.client
    for name in ("one", "two"):  # untagged images: collectable at once with no grace period
        assert (await put_manifest(client, "app", await image(client, "app", name)))[0] == 201
    config = config_file(registry, tmp_path)
    extra = ["--config", str(config)] if config else []
    command = [sys.executable, "-m", "registry", "gc", "--grace-period", "0s"]
    command += ["--data-dir", str(registry.data_dir), *extra]

    def on_a_terminal() -> tuple[int, str, str]:
        controller, terminal = pty.openpty()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the command is done
                break
            if not chunk:
                break
            shown += chunk
        os.close(controller)
        out = process.stdout.read().decode() if process.stdout else ""
        return process.wait(timeout=60), shown.decode(errors="replace"), out

    code, shown, out = await asyncio.to_thread(on_a_terminal)
    assert code == 0
    assert "gc: 2 manifests, 0 blobs removed so far" in shown, shown
    assert "removed manifest app@" in out and "progress" not in out and "so far" not in out
    # Redirected, nothing but the report: no progress noise.
    quiet = trustyard(registry.data_dir, "gc", "--grace-period", "0s", config=config)
    assert quiet.returncode == 0 and "so far" not in quiet.stderr + quiet.stdout
