"""docker push / pull / build against Trustyard, through a private dockerd."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    PUSH_DIGEST,
    DockerDaemon,
    get_manifest,
    http,
    list_tags,
    make_rootfs_tar,
    repo_digests,
    sha256_digest,
)
from tests.server_process import RegistryProcess

pytestmark = pytest.mark.e2e

BASE_FILES = {
    "etc/e2e-release": b"trustyard e2e base image\n",
    "opt/data/numbers.txt": b"".join(b"%d\n" % i for i in range(2000)),
}
APP_FILE = b"hello from the app layer built on top of e2e/imported\n"


@dataclass
class PushedImage:
    ref: str
    repo: str
    tag: str
    digest: str
    manifest: dict[str, object]
    push_output: str


def push(dockerd: DockerDaemon, registry: RegistryProcess, repo: str, tag: str) -> PushedImage:
    """`docker push` and check the digest it prints against the registry's answer."""
    ref = f"{registry.host}/{repo}:{tag}"
    out = dockerd.docker("push", ref).stdout
    match = PUSH_DIGEST.search(out)
    assert match is not None, f"no digest line in docker push output:\n{out}"
    assert match.group(1) == tag
    digest = match.group(2)

    resp = get_manifest(registry, repo, tag)
    assert resp.status == 200, f"GET manifest {repo}:{tag} -> {resp.status} {resp.body!r}"
    assert resp.headers.get("docker-content-digest") == digest, resp.headers
    assert sha256_digest(resp.body) == digest
    assert len(resp.body) == int(match.group(3))
    assert resp.headers.get("content-type") in (DOCKER_MANIFEST, OCI_MANIFEST), resp.headers
    manifest = json.loads(resp.body)
    assert manifest["schemaVersion"] == 2
    assert tag in list_tags(registry, repo)
    return PushedImage(ref, repo, tag, digest, manifest, out)


def remove_local(dockerd: DockerDaemon, *refs: str) -> None:
    for ref in refs:
        dockerd.docker("rmi", "--force", ref, check=False)
    for ref in refs:
        gone = dockerd.docker("image", "inspect", ref, check=False)
        assert gone.returncode != 0, f"{ref} is still in the local image store"


def layer_digests(manifest: dict[str, object]) -> list[str]:
    layers = manifest["layers"]
    assert isinstance(layers, list)
    return [str(layer["digest"]) for layer in layers]


@pytest.fixture(scope="module")
def base_image(
    dockerd: DockerDaemon, module_registry: RegistryProcess, e2e_tmp: Path
) -> PushedImage:
    """A tiny image made with `docker import`, pushed as e2e/imported:v1."""
    tarball = e2e_tmp / "base.tar"
    tarball.write_bytes(make_rootfs_tar(BASE_FILES))
    ref = f"{module_registry.host}/e2e/imported:v1"
    dockerd.docker("import", "--change", "ENV E2E_BASE=1", str(tarball), ref)
    return push(dockerd, module_registry, "e2e/imported", "v1")


def test_docker_push_rmi_pull_imported(
    dockerd: DockerDaemon, module_registry: RegistryProcess, base_image: PushedImage
) -> None:
    host = module_registry.host
    assert len(layer_digests(base_image.manifest)) == 1
    config = base_image.manifest["config"]
    assert isinstance(config, dict)
    blob = http("GET", f"{module_registry.url}/v2/e2e/imported/blobs/{config['digest']}")
    assert blob.status == 200
    assert sha256_digest(blob.body) == config["digest"]
    assert json.loads(blob.body)["rootfs"]["type"] == "layers"

    remove_local(dockerd, base_image.ref)
    dockerd.docker("pull", base_image.ref)
    assert f"{host}/e2e/imported@{base_image.digest}" in repo_digests(dockerd, base_image.ref)

    resp = get_manifest(module_registry, "e2e/imported", "v1")
    assert resp.status == 200
    assert resp.headers.get("docker-content-digest") == base_image.digest

    # Pull by digest too: same image, same content.
    by_digest = f"{host}/e2e/imported@{base_image.digest}"
    dockerd.docker("pull", by_digest)
    local_id = dockerd.docker("image", "inspect", "--format", "{{.Id}}", base_image.ref).stdout
    digest_id = dockerd.docker("image", "inspect", "--format", "{{.Id}}", by_digest).stdout
    assert local_id.strip() == digest_id.strip()


def test_docker_build_from_registry_base_mounts_layers(
    dockerd: DockerDaemon,
    module_registry: RegistryProcess,
    base_image: PushedImage,
    e2e_tmp: Path,
) -> None:
    host = module_registry.host
    context = e2e_tmp / "build-context"
    context.mkdir()
    (context / "app.txt").write_bytes(APP_FILE)
    (context / "Dockerfile").write_text(
        f"FROM {host}/e2e/imported:v1\n"
        "COPY app.txt /app/app.txt\n"
        'LABEL org.trustyard.e2e="build"\n'
        "ENV APP_MODE=e2e\n"
    )
    app_ref = f"{host}/e2e/app:v1"
    dockerd.docker("build", "--tag", app_ref, str(context), timeout=300)

    app = push(dockerd, module_registry, "e2e/app", "v1")
    # The base layer already lives in e2e/imported: docker asks for a cross-repository mount
    # (POST /v2/e2e/app/blobs/uploads/?mount=...&from=e2e/imported) and says so when the
    # registry answers 201 Created instead of opening an upload session.
    assert "Mounted from e2e/imported" in app.push_output, app.push_output

    base_layers = layer_digests(base_image.manifest)
    app_layers = layer_digests(app.manifest)
    assert app_layers[: len(base_layers)] == base_layers
    assert len(app_layers) == len(base_layers) + 1  # COPY adds a layer; LABEL and ENV do not
    for digest in app_layers:
        head = http("HEAD", f"{module_registry.url}/v2/e2e/app/blobs/{digest}")
        assert head.status == 200, f"HEAD e2e/app blob {digest} -> {head.status}"
        assert head.headers.get("docker-content-digest") == digest

    config = app.manifest["config"]
    assert isinstance(config, dict)
    config_blob = http("GET", f"{module_registry.url}/v2/e2e/app/blobs/{config['digest']}")
    assert config_blob.status == 200
    image_config = json.loads(config_blob.body)["config"]
    assert image_config["Labels"]["org.trustyard.e2e"] == "build"
    assert "APP_MODE=e2e" in image_config["Env"]
    assert "E2E_BASE=1" in image_config["Env"]

    # Nothing local any more: the pull must come from the registry alone.
    remove_local(dockerd, app_ref, base_image.ref, f"{host}/e2e/imported@{base_image.digest}")
    dockerd.docker("pull", app_ref)
    assert f"{host}/e2e/app@{app.digest}" in repo_digests(dockerd, app_ref)

    container = dockerd.docker("create", app_ref, "/does-not-run").stdout.strip()
    try:
        out_dir = e2e_tmp / "docker-cp"
        out_dir.mkdir()
        dockerd.docker("cp", f"{container}:/app/app.txt", str(out_dir / "app.txt"))
        dockerd.docker("cp", f"{container}:/etc/e2e-release", str(out_dir / "e2e-release"))
        assert (out_dir / "app.txt").read_bytes() == APP_FILE
        assert (out_dir / "e2e-release").read_bytes() == BASE_FILES["etc/e2e-release"]
    finally:
        dockerd.docker("rm", "--force", container, check=False)


def test_docker_repush_moves_tag_and_missing_tag_errors(
    dockerd: DockerDaemon,
    module_registry: RegistryProcess,
    base_image: PushedImage,
    e2e_tmp: Path,
) -> None:
    host = module_registry.host
    ref = f"{host}/e2e/moving:latest"
    digests = []
    for generation in (1, 2):
        context = e2e_tmp / f"moving-{generation}"
        context.mkdir()
        (context / "gen.txt").write_text(f"generation {generation}\n")
        (context / "Dockerfile").write_text(f"FROM {host}/e2e/imported:v1\nCOPY gen.txt /gen.txt\n")
        dockerd.docker("build", "--tag", ref, str(context), timeout=300)
        digests.append(push(dockerd, module_registry, "e2e/moving", "latest").digest)
    first, second = digests
    assert first != second

    # The tag follows the last push; the first manifest is still there by digest.
    resp = get_manifest(module_registry, "e2e/moving", "latest")
    assert resp.headers.get("docker-content-digest") == second
    old = get_manifest(module_registry, "e2e/moving", first)
    assert old.status == 200
    assert sha256_digest(old.body) == first
    assert list_tags(module_registry, "e2e/moving") == ["latest"]

    dockerd.docker("rmi", "--force", ref)
    dockerd.docker("pull", f"{host}/e2e/moving@{first}")
    assert f"{host}/e2e/moving@{first}" in repo_digests(dockerd, f"{host}/e2e/moving@{first}")

    # A tag that does not exist: the client reads the registry's MANIFEST_UNKNOWN error.
    missing = dockerd.docker("pull", f"{host}/e2e/moving:no-such-tag", check=False)
    assert missing.returncode != 0
    assert "manifest unknown" in missing.stderr.lower(), missing.stderr
    missing_repo = dockerd.docker("pull", f"{host}/e2e/no-such-repo:v1", check=False)
    assert missing_repo.returncode != 0
    assert "name unknown" in missing_repo.stderr.lower(), missing_repo.stderr
