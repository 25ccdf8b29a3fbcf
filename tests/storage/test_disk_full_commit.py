"""A disk that fills up at the very moment an upload is committed (the final PUT, after every
byte was received and the digest checked): 507 STORAGE_FULL with the spec's error body, no blob
visible, the upload's bytes removed at once (not left for garbage collection to find) and its
session ended, and the same push succeeds once there is room.

The data directory is a tmpfs mounted for the test with few inodes (CI runs as root): filling
the inodes lets every byte of the upload be written, then makes its placement (a hard link on
tmpfs takes an inode) fail with ENOSPC. Where mounting is not allowed the test is skipped and
says why (a failure in CI, `TRUSTYARD_REQUIRE_E2E=1`)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.oci import error_codes, sha256

#: Inodes of the test's disk: the data directory's folders, the database and its journal, the
#: upload, and the filler files that take the rest.
INODES = 400
UPLOAD = 3 * 1024 * 1024
#: What the database may write meanwhile (ending the session): a few pages.
SLACK = 64 * 1024


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with room for bytes but few inodes, mounted for this test and unmounted after."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small disk")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=64m,nr_inodes={INODES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def data_dir(disk: Path) -> Path:
    """The registry's data directory, on the small disk (overrides the conftest's)."""
    return disk / "data"


def take_every_inode(folder: Path) -> int:
    """Create empty files in `folder` until the disk has no inode left; how many."""
    folder.mkdir()
    count = 0
    while True:
        try:
            (folder / str(count)).touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            return count
        count += 1


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bfree * stat.f_frsize


async def test_a_full_disk_during_the_commit_leaves_nothing_and_frees_the_upload(
    start_client: Any, disk: Path, data_dir: Path
) -> None:
    client = await start_client()
    data = os.urandom(UPLOAD)
    digest = sha256(data)
    resp = await client.post("/v2/app/blobs/uploads/")
    assert resp.status == 202
    location = resp.headers["Location"]
    resp = await client.patch(
        location, data=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert resp.status == 202, await resp.text()
    assert resp.headers["Range"] == f"0-{UPLOAD - 1}"
    assert take_every_inode(disk / "filler") > 0
    before = free_bytes(disk)

    resp = await client.put(f"{location}?digest={digest}")
    assert resp.status == 507, await resp.text()
    body = await resp.json()
    assert error_codes(body) == ["STORAGE_FULL"]
    assert "no space left" in body["errors"][0]["detail"]["reason"]

    # Nothing visible, under the digest or as an upload to finish later.
    assert (await client.head(f"/v2/app/blobs/{digest}")).status == 404
    resp = await client.get(location)
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["BLOB_UPLOAD_UNKNOWN"]
    # The upload's bytes are gone now, not at the next garbage collection.
    assert list((data_dir / "uploads").iterdir()) == []
    assert free_bytes(disk) - before >= UPLOAD - SLACK

    # Room again: the same push goes through whole.
    shutil.rmtree(disk / "filler")
    resp = await client.post(
        f"/v2/app/blobs/uploads/?digest={digest}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert resp.status == 201, await resp.text()
    resp = await client.get(f"/v2/app/blobs/{digest}")
    assert resp.status == 200 and await resp.read() == data
    with contextlib.suppress(FileNotFoundError):
        assert list((data_dir / "uploads").iterdir()) == []
