"""The users file on a full disk: `trustyard user add`/`robot add` refuse with a reason, the file
stays as it was (every account still logs in) and no partial copy of it (password hashes and
robot token digests) is left beside it; once there is room the same command works. A users file
that cannot be read is refused with its reason too.

The data directory is a small tmpfs mounted for the test (CI runs as root). Where mounting is not
allowed the test is skipped and says why (a failure in CI, `TRUSTYARD_REQUIRE_E2E=1`).
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.auth.users import UserStore
from registry.cli import main
from tests.auth.conftest import PASSWORDS, write_accounts


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for this test and unmounted after."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small disk")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path) -> Path:
    """Write a file into `folder` until the disk is full; the file."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.mark.parametrize(
    "command",
    [
        ["robot", "add", "builder", "--group", "ci"],
        ["robot", "add", "ci", "--group", "ci", "--replace"],
        ["user", "remove", "bob"],
    ],
)
def test_a_full_disk_leaves_the_users_file_whole_and_nothing_beside_it(
    disk: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    data = disk / "data"
    accounts = write_accounts(data)
    folder = accounts.store.path.parent
    before = accounts.store.path.read_bytes()
    filler = fill(disk)

    assert main([*command, "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err
    assert err == f"trustyard: {accounts.store.path}: cannot write: No space left on device\n"
    assert sorted(p.name for p in folder.iterdir()) == ["users.yaml"]
    assert accounts.store.path.read_bytes() == before
    fresh = UserStore(accounts.store.path)
    assert fresh.verify("bob", PASSWORDS["bob"]) is not None
    assert fresh.verify("ci", accounts.robot_token) is not None

    filler.unlink()
    assert main([*command, "--data-dir", str(data)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["users.yaml"]
    assert accounts.store.path.read_bytes() != before


def test_a_users_file_that_cannot_be_read_is_refused_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a traceback: the file and why (here a folder where the file should be)."""
    data = tmp_path / "data"
    users = data / "auth" / "users.yaml"
    users.mkdir(parents=True)
    assert main(["robot", "add", "builder", "--data-dir", str(data)]) == 1
    assert capsys.readouterr().err == (
        f"trustyard: {users}: cannot read: [Errno 21] Is a directory: '{users}'\n"
    )
    assert sorted(p.name for p in users.parent.iterdir()) == ["users.yaml"]
