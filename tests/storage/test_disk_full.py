"""A full disk: uploads are refused with 507 STORAGE_FULL and leave nothing behind, reads go on,
and `trustyard gc` frees space on the full disk itself.

The data directory is a 50 MiB tmpfs mounted for the test (CI runs as root); where mounting is
not allowed the test is skipped and says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import registry_metadata_url
from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, sha256
from tests.server_process import RegistryProcess, start_registry

DISK = "50m"
BLOB = 4 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 50 MiB tmpfs, mounted for this test and unmounted after."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small disk")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a {DISK} tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def request(
    server: RegistryProcess, method: str, path: str, data: bytes | None = None, **headers: str
) -> tuple[int, bytes]:
    """One HTTP request to the server: (status, body)."""
    req = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def push(server: RegistryProcess, name: str, data: bytes) -> tuple[int, bytes]:
    """A monolithic blob upload."""
    return request(server, "POST", f"/v2/{name}/blobs/uploads/?digest={sha256(data)}", data)


def assert_storage_full(status: int, body: bytes) -> None:
    """507 with the spec's error body naming the cause."""
    assert status == 507, body
    error = json.loads(body)["errors"][0]
    assert error["code"] == "STORAGE_FULL"
    assert "no space left" in error["detail"]["reason"]


def test_full_disk_refuses_writes_keeps_reads_and_gc_frees_space(small_disk, tmp_path):
    data_dir = small_disk
    server = start_registry(data_dir)
    try:
        # An image that must stay readable throughout.
        layer = os.urandom(1024 * 1024)
        config = json.dumps({"os": "linux"}).encode()
        assert push(server, "app", layer)[0] == 201
        assert push(server, "app", config)[0] == 201
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
                "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}],
            }
        ).encode()
        status, _ = request(
            server, "PUT", "/v2/app/manifests/v1", manifest, **{"Content-Type": OCI_MANIFEST}
        )
        assert status == 201

        # Unreferenced blobs until the disk refuses one.
        loose: list[str] = []
        for _ in range(20):
            data = os.urandom(BLOB)
            status, body = push(server, "loose", data)
            if status != 201:
                assert_storage_full(status, body)
                break
            loose.append(sha256(data))
        else:
            pytest.fail("a 50 MiB disk took 80 MiB")
        assert len(loose) >= 5
        assert os.listdir(data_dir / "uploads") == []  # the partial upload is gone

        # A chunked upload that does not fit is refused the same way, and its bytes removed.
        status, _ = request(server, "POST", "/v2/loose/blobs/uploads/")
        assert status == 202
        session = [u for u in os.listdir(data_dir / "uploads")]
        assert len(session) == 1
        status, body = request(
            server,
            "PATCH",
            f"/v2/loose/blobs/uploads/{session[0]}",
            os.urandom(2 * BLOB),
            **{"Content-Type": "application/octet-stream"},
        )
        assert_storage_full(status, body)
        assert os.listdir(data_dir / "uploads") == []

        # Now fill every last byte, so that not even the database can write (SQLite's file is on
        # this disk; PostgreSQL's are not, and a manifest whose blobs are all here is stored).
        with contextlib.suppress(OSError), (data_dir / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        status, body = request(
            server, "PUT", "/v2/app/manifests/v2", manifest, **{"Content-Type": OCI_MANIFEST}
        )
        if registry_metadata_url() is None:
            assert_storage_full(status, body)
        else:
            assert status == 201, body

        # Reads go on.
        status, body = request(server, "GET", "/v2/app/manifests/v1")
        assert (status, body) == (200, manifest)
        status, body = request(server, "GET", f"/v2/app/blobs/{sha256(layer)}")
        assert status == 200 and body == layer

        # The collector runs on the full disk (beside the running server) and frees space.
        gc = subprocess.run(
            [
                sys.executable,
                "-m",
                "registry",
                "gc",
                "--data-dir",
                str(data_dir),
                "--grace-period",
                "0s",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert gc.returncode == 0, gc.stderr[-3000:]
        assert sorted(json.loads(gc.stdout)["blobs"]) == sorted(loose)
        assert shutil.disk_usage(data_dir).free > len(loose) * BLOB * 0.9

        # And pushes work again.
        assert push(server, "app", os.urandom(BLOB))[0] == 201
        status, _ = request(
            server, "PUT", "/v2/app/manifests/v2", manifest, **{"Content-Type": OCI_MANIFEST}
        )
        assert status == 201
        status, body = request(server, "GET", f"/v2/app/blobs/{sha256(layer)}")
        assert status == 200 and body == layer
    finally:
        server.stop()
        print(server.log()[-3000:])
