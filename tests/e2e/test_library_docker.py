"""The base-image library through the real docker client: a base imported with `trustyard library
import` from a `docker save` tarball, an app `docker build`-ed on it and pushed (lineage
recorded), the base patched with `docker push` into the library namespace (the app is now on
the rebuild list), and an app not built on the library refused with the rule's reason in the
`docker push` output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DockerDaemon, http, make_rootfs_tar, run
from tests.server_process import RegistryProcess, start_registry

pytestmark = pytest.mark.e2e

POLICY = """\
version: 1
library:
  namespace: library
  images:
    - name: base
      tags: ["1"]
rules:
  - name: apps build on the library
    match: {repositories: ["apps/**"], on: [push]}
    require:
      base_image: {from_library: true}
"""

DOCKERFILE = """\
FROM {base}
COPY app.txt /srv/app.txt
LABEL org.opencontainers.image.title=web
ENV APP=web
"""


@pytest.fixture(scope="module")
def library_policy(e2e_tmp: Path) -> Path:
    path = e2e_tmp / "library-policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="module")
def library_registry(e2e_tmp: Path, library_policy: Path) -> Iterator[RegistryProcess]:
    """A Trustyard process enforcing POLICY."""
    server = start_registry(e2e_tmp / "library-data", extra_args=["--policy", str(library_policy)])
    try:
        yield server
    finally:
        server.stop()


def trustyard(registry: RegistryProcess, policy: Path, *args: str) -> str:
    """Run `trustyard library ...` on the server's data directory; its output."""
    return run(
        [
            sys.executable,
            "-m",
            "registry",
            "library",
            *args,
            "--data-dir",
            str(registry.data_dir),
            "--policy",
            str(policy),
        ],
        # The server's own metadata database (the module's, under the PostgreSQL pass).
        env=registry.command_env(),
    ).stdout


def docker_import(dockerd: DockerDaemon, work: Path, ref: str, files: dict[str, bytes]) -> None:
    """A one-layer image made with `docker import`, tagged `ref`."""
    tarball = work / "rootfs.tar"
    tarball.write_bytes(make_rootfs_tar(files))
    dockerd.docker("import", str(tarball), ref)


def consumers(registry: RegistryProcess, name: str, tag: str) -> list[dict[str, Any]]:
    resp = http("GET", f"{registry.url}/api/v1/library/{name}/{tag}/consumers")
    assert resp.status == 200, resp.body
    document = resp.json()
    assert isinstance(document, dict)
    return list(document["consumers"])


def test_library_lineage_staleness_and_refusal_with_docker(
    dockerd: DockerDaemon, library_registry: RegistryProcess, library_policy: Path, e2e_tmp: Path
) -> None:
    host = library_registry.host
    base_ref = f"{host}/library/base:1"
    work = e2e_tmp / "library-work"
    work.mkdir()

    # 1. Ops import a base from a `docker save` tarball.
    docker_import(dockerd, work, "e2e-lib-base:1", {"etc/base-release": b"base 1\n"})
    saved = work / "base.tar"
    dockerd.docker("save", "-o", str(saved), "e2e-lib-base:1")
    out = trustyard(library_registry, library_policy, "import", str(saved), "--as", "base:1")
    assert out.startswith("imported library/base:1 = sha256:"), out
    imported_digest = out.split(" = ", 1)[1].split()[0]

    # 2. A developer builds on it (pulled from the registry: the import is what docker sees).
    dockerd.docker("rmi", "e2e-lib-base:1")
    pulled = dockerd.docker("pull", base_ref).stdout
    assert imported_digest in pulled, pulled
    app = work / "app"
    app.mkdir()
    (app / "app.txt").write_text("hello from the app\n")
    (app / "Dockerfile").write_text(DOCKERFILE.format(base=base_ref))
    app_ref = f"{host}/apps/web:v1"
    dockerd.docker("build", "-t", app_ref, str(app))
    dockerd.docker("push", app_ref)
    [web] = consumers(library_registry, "base", "1")
    assert (web["repository"], web["tag"], web["base_digest"]) == (
        "apps/web",
        "v1",
        imported_digest,
    )
    assert web["current"] is True
    assert trustyard(library_registry, library_policy, "stale", "--json") == ""

    # 3. Ops roll out a patched base by pushing it to the same library tag with docker.
    docker_import(dockerd, work, base_ref, {"etc/base-release": b"base 1, patched\n"})
    dockerd.docker("push", base_ref)
    [web] = consumers(library_registry, "base", "1")
    assert web["current"] is False
    assert web["current_digest"] not in (None, imported_digest)
    stale = [
        json.loads(line)
        for line in trustyard(library_registry, library_policy, "stale", "--json").splitlines()
    ]
    assert [(s["repository"], s["tag"], s["base_digest"]) for s in stale] == [
        ("apps/web", "v1", imported_digest)
    ]
    table = trustyard(library_registry, library_policy, "stale")
    assert "apps/web" in table and "base:1@sha256:" in table, table

    # 4. An app on anything else (here a `docker import`, like FROM scratch) is refused.
    other_ref = f"{host}/apps/scratch:v1"
    docker_import(dockerd, work, other_ref, {"srv/own-rootfs": b"not from the library\n"})
    refused = dockerd.docker("push", other_ref, check=False)
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert (
        'denied: rule "apps build on the library": image is not built on a library image '
        "(closest: base:1 shares 0 of 1 layers)"
    ) in output, output
    missing = http("GET", f"{library_registry.url}/v2/apps/scratch/manifests/v1")
    assert missing.status == 404


def test_the_library_command_refuses_an_undeclared_tag(
    dockerd: DockerDaemon, library_registry: RegistryProcess, library_policy: Path, e2e_tmp: Path
) -> None:
    work = e2e_tmp / "library-undeclared"
    work.mkdir()
    docker_import(dockerd, work, "e2e-lib-other:1", {"etc/other": b"other\n"})
    saved = work / "other.tar"
    dockerd.docker("save", "-o", str(saved), "e2e-lib-other:1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "registry",
            "library",
            "import",
            str(saved),
            "--as",
            "base:2",
            "--data-dir",
            str(library_registry.data_dir),
            "--policy",
            str(library_policy),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=library_registry.command_env(),
    )
    assert proc.returncode == 1
    assert "base:2 is not declared in the library (declared: base:1)" in proc.stderr
