"""One image through several clients: docker pushes, skopeo copies registry-to-registry
(same host, another repository), podman and docker pull the copy."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    DOCKER_MANIFEST,
    PUSH_DIGEST,
    ContainersConfig,
    DockerDaemon,
    Podman,
    get_manifest,
    http,
    list_tags,
    make_rootfs_tar,
    read_from_layer,
    repo_digests,
    require_binary,
    run,
    sha256_digest,
)
from tests.server_process import RegistryProcess

pytestmark = pytest.mark.e2e

# Incompressible, so the layer blob is a few MiB and goes up as a streamed upload.
BIG = random.Random(20240101).randbytes(3 * 1024 * 1024)
FILES = {"etc/interop": b"docker -> skopeo -> podman\n", "var/big.bin": BIG}


def blob_in(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def test_docker_push_skopeo_copy_podman_and_docker_pull(
    dockerd: DockerDaemon,
    containers_config: ContainersConfig,
    module_registry: RegistryProcess,
    e2e_tmp: Path,
) -> None:
    skopeo = require_binary("skopeo")
    podman = Podman(require_binary("podman"), e2e_tmp / "podman-interop", containers_config)
    policy = str(containers_config.policy)
    host = module_registry.host
    source = f"{host}/e2e/interop/docker:v1"
    copy = f"{host}/e2e/interop/copied:v1"

    tarball = e2e_tmp / "interop.tar"
    tarball.write_bytes(make_rootfs_tar(FILES))
    dockerd.docker("import", str(tarball), source)
    out = dockerd.docker("push", source).stdout
    match = PUSH_DIGEST.search(out)
    assert match is not None, out
    digest = match.group(2)
    pushed = get_manifest(module_registry, "e2e/interop/docker", "v1")
    assert pushed.status == 200
    assert pushed.headers.get("docker-content-digest") == digest
    assert pushed.headers.get("content-type") == DOCKER_MANIFEST
    manifest = json.loads(pushed.body)
    (layer,) = manifest["layers"]
    assert layer["size"] > len(BIG)  # random bytes do not compress
    blob = http("GET", f"{module_registry.url}/v2/e2e/interop/docker/blobs/{layer['digest']}")
    assert blob.status == 200
    assert len(blob.body) == layer["size"]
    assert sha256_digest(blob.body) == layer["digest"]

    # Registry to registry (same host), no format change: the digest must not change.
    run(
        [
            skopeo,
            "--policy",
            policy,
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{source}",
            f"docker://{copy}",
        ],
        env=containers_config.env,
    )
    copied = get_manifest(module_registry, "e2e/interop/copied", "v1")
    assert copied.status == 200
    assert copied.headers.get("docker-content-digest") == digest
    assert copied.body == pushed.body
    assert list_tags(module_registry, "e2e/interop/copied") == ["v1"]
    for desc in (manifest["config"], layer):
        head = http("HEAD", f"{module_registry.url}/v2/e2e/interop/copied/blobs/{desc['digest']}")
        assert head.status == 200, desc
        assert int(head.headers["content-length"]) == desc["size"]

    try:
        podman("pull", "--tls-verify=false", "--signature-policy", policy, copy)
        assert podman("image", "inspect", "--format", "{{.Digest}}", copy).strip() == digest
        saved = e2e_tmp / "interop-save"
        podman("save", "--format", "oci-dir", "--output", str(saved), copy)
        index = json.loads((saved / "index.json").read_text())
        saved_manifest = json.loads(blob_in(saved, index["manifests"][0]["digest"]))
        (saved_layer,) = saved_manifest["layers"]
        assert read_from_layer(blob_in(saved, saved_layer["digest"]), "var/big.bin") == BIG
    finally:
        podman.reset()

    dockerd.docker("rmi", "--force", source)
    dockerd.docker("pull", copy)
    assert f"{host}/e2e/interop/copied@{digest}" in repo_digests(dockerd, copy)
    container = dockerd.docker("create", copy, "/does-not-run").stdout.strip()
    try:
        target = e2e_tmp / "interop-big.bin"
        dockerd.docker("cp", f"{container}:/var/big.bin", str(target))
        assert target.read_bytes() == BIG
    finally:
        dockerd.docker("rm", "--force", container, check=False)
        dockerd.docker("rmi", "--force", copy, check=False)
