"""podman push / pull against Trustyard, with private storage (vfs, no daemon)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    ContainersConfig,
    Podman,
    get_manifest,
    http,
    list_tags,
    make_rootfs_tar,
    read_from_layer,
    require_binary,
    sha256_digest,
)
from tests.server_process import RegistryProcess

pytestmark = pytest.mark.e2e

FILES = {
    "etc/podman-e2e": b"imported by podman\n",
    "srv/payload.bin": bytes(range(256)) * 32,
}


@pytest.fixture(scope="module")
def podman(e2e_tmp: Path, containers_config: ContainersConfig):
    tool = Podman(require_binary("podman"), e2e_tmp / "podman", containers_config)
    try:
        yield tool
    finally:
        tool.reset()
        shutil.rmtree(tool.base, ignore_errors=True)


def image_digest(podman: Podman, ref: str) -> str:
    return podman("image", "inspect", "--format", "{{.Digest}}", ref).strip()


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_podman_import_push_rmi_pull(
    podman: Podman,
    containers_config: ContainersConfig,
    module_registry: RegistryProcess,
    e2e_tmp: Path,
    fmt: str,
) -> None:
    tarball = e2e_tmp / f"podman-{fmt}.tar"
    tarball.write_bytes(make_rootfs_tar({**FILES, "etc/format": fmt.encode()}))
    ref = f"{module_registry.host}/e2e/podman:{fmt}"
    podman("import", "--change", "ENV PODMAN_E2E=1", str(tarball), ref)

    digest_file = e2e_tmp / f"podman-{fmt}.digest"
    policy = str(containers_config.policy)
    podman(
        "push",
        "--tls-verify=false",
        "--signature-policy",
        policy,
        "--format",
        fmt,
        "--digestfile",
        str(digest_file),
        ref,
    )
    pushed = digest_file.read_text().strip()
    assert pushed.startswith("sha256:")

    resp = get_manifest(module_registry, "e2e/podman", fmt)
    assert resp.status == 200
    assert resp.headers.get("docker-content-digest") == pushed
    assert sha256_digest(resp.body) == pushed
    expected_type = OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST
    assert resp.headers.get("content-type") == expected_type
    manifest = json.loads(resp.body)
    # mediaType is optional in an OCI manifest (podman 4 leaves it out), required in v2s2.
    assert manifest.get("mediaType", OCI_MANIFEST) == expected_type
    assert fmt in list_tags(module_registry, "e2e/podman")
    for layer in manifest["layers"]:
        head = http("HEAD", f"{module_registry.url}/v2/e2e/podman/blobs/{layer['digest']}")
        assert head.status == 200
        assert int(head.headers["content-length"]) == layer["size"]

    podman.reset()
    assert podman.proc("image", "exists", ref, check=False).returncode == 1
    podman("pull", "--tls-verify=false", "--signature-policy", policy, ref)
    assert image_digest(podman, ref) == pushed

    # The pulled image has the imported files, byte for byte, and the imported config.
    saved = e2e_tmp / f"podman-{fmt}-save"
    podman("save", "--format", "oci-dir", "--output", str(saved), ref)

    def blob(digest: str) -> bytes:
        return (saved / "blobs/sha256" / digest.split(":", 1)[1]).read_bytes()

    index = json.loads((saved / "index.json").read_text())
    saved_manifest = json.loads(blob(index["manifests"][0]["digest"]))
    assert len(saved_manifest["layers"]) == 1
    config = json.loads(blob(saved_manifest["config"]["digest"]))
    assert "PODMAN_E2E=1" in config["config"]["Env"]
    layer = blob(saved_manifest["layers"][0]["digest"])
    for path, content in FILES.items():
        assert read_from_layer(layer, path) == content, path
