"""deploy/Dockerfile, built and run in a private dockerd: the image serves on a named volume.

The base image is this machine's Python (`tests/deploy/base_image.py`, imported with `docker
import`), passed as `--build-arg BASE=`: every other step is the Dockerfile's own. The container
runs as the image's user (65532) on a fresh named volume, as compose runs it, and must accept a
push (the volume is writable by that user) and answer its probes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.base_image import base_rootfs
from tests.e2e.dockerd import PrivateDockerd, docker_available, start_dockerd, xdist_worker

ROOT = Path(__file__).parents[2]
BASE = "trustyard-base:offline"
IMAGE = "trustyard:ci"


@pytest.fixture(scope="module")
def daemon() -> Iterator[PrivateDockerd]:
    if docker_available() is None:
        pytest.skip("dockerd, docker or containerd is not installed (run .ci/install-e2e-deps.sh)")
    started = start_dockerd(
        ("overlay2", "vfs"),
        namespace=f"ty-deploy{xdist_worker()}",
        prefix="ty-dp-",
    )
    try:
        yield started
    finally:
        started.stop()


def _docker(daemon: PrivateDockerd, *args: str, timeout: float = 600) -> str:
    result = daemon.docker(*args, timeout=timeout)
    assert result.returncode == 0, f"docker {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def image(daemon: PrivateDockerd, tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("image")
    tar, changes = base_rootfs(work / "base.tar")
    _docker(daemon, "import", *(f"--change={c}" for c in changes), str(tar), BASE)
    tar.unlink()
    # The build context holds what the Dockerfile copies, nothing else.
    context = work / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    for name in ("registry", "storage", "policies", "shared"):
        shutil.copytree(ROOT / name, context / name, ignore=shutil.ignore_patterns("__pycache__"))
    (context / "deploy").mkdir()
    shutil.copy(ROOT / "deploy" / "Dockerfile", context / "deploy" / "Dockerfile")
    _docker(
        daemon,
        "build",
        "-f",
        "deploy/Dockerfile",
        "--build-arg",
        f"BASE={BASE}",
        "-t",
        IMAGE,
        str(context),
        timeout=1200,
    )
    return IMAGE


def _logs(daemon: PrivateDockerd, name: str) -> str:
    """What the container printed so far (the server logs to stderr)."""
    result = daemon.docker("logs", name)
    return result.stdout + result.stderr


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_the_image_serves_on_a_fresh_named_volume(daemon: PrivateDockerd, image: str) -> None:
    inspected = json.loads(_docker(daemon, "image", "inspect", image))[0]["Config"]
    assert inspected["User"] == "65532:65532"
    assert "/var/lib/trustyard" in inspected["Volumes"]
    assert inspected["Healthcheck"]["Test"][-1].endswith("timeout=2)")
    unique = uuid.uuid4().hex[:12]
    volume = f"trustyard-data-{unique}"
    _docker(daemon, "volume", "create", volume)
    name = f"trustyard-{unique}"
    _docker(
        daemon,
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",  # the private dockerd has no bridge; the server binds loopback only
        "-e",
        "TRUSTYARD_LISTEN=127.0.0.1:0",  # the system picks a free port; the log names it
        "-v",
        f"{volume}:/var/lib/trustyard",
        image,
    )
    try:
        deadline = time.monotonic() + 60
        status, url = 0, ""
        while time.monotonic() < deadline:
            if not url:
                bound = re.search(r"listening on (http://127\.0\.0\.1:\d+)", _logs(daemon, name))
                url = bound.group(1) if bound else ""
            try:
                if not url:
                    raise OSError("not listening yet")
                status, body = _get(f"{url}/readyz")
            except OSError:
                state = json.loads(_docker(daemon, "inspect", name))[0]["State"]
                assert state["Running"], _docker(daemon, "logs", name)
                time.sleep(0.2)
                continue
            break
        assert status == 200, _docker(daemon, "logs", name)
        assert json.loads(body)["status"] == "ready"
        assert _get(f"{url}/healthz")[0] == 200
        # A push writes blobs, uploads and the database: the volume is the runtime user's.
        data = b"written by uid 65532"
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        push = urllib.request.Request(
            f"{url}/v2/ci/probe/blobs/uploads/?digest={digest}", data=data, method="POST"
        )
        with urllib.request.urlopen(push, timeout=10) as response:
            assert response.status == 201
        assert _get(f"{url}/v2/ci/probe/blobs/{digest}") == (200, data)
        owner = _docker(
            daemon,
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            f"{volume}:/data",
            "--entrypoint",
            "python",
            image,
            "-c",
            "import os; print(os.stat('/data').st_uid, os.stat('/data/metadata.sqlite').st_uid)",
        )
        assert owner.split() == ["65532", "65532"]
    finally:
        daemon.docker("rm", "-f", name)
        daemon.docker("volume", "rm", "-f", volume)
