"""skopeo copy / inspect / delete between OCI layouts and Trustyard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    OCI_INDEX,
    OCI_MANIFEST,
    ContainersConfig,
    OciLayout,
    get_manifest,
    http,
    layout_blob_digests,
    layout_ref_digest,
    list_tags,
    require_binary,
    run,
    sha256_digest,
)
from tests.server_process import RegistryProcess

pytestmark = pytest.mark.e2e


class Skopeo:
    def __init__(self, binary: str, config: ContainersConfig) -> None:
        self.binary = binary
        self.config = config

    def __call__(self, *args: str, check: bool = True) -> str:
        cmd = [self.binary, "--policy", str(self.config.policy), *args]
        return run(cmd, env=self.config.env, check=check).stdout


@pytest.fixture(scope="module")
def skopeo(containers_config: ContainersConfig) -> Skopeo:
    return Skopeo(require_binary("skopeo"), containers_config)


def test_skopeo_copy_inspect_copy_back_delete(
    skopeo: Skopeo, module_registry: RegistryProcess, e2e_tmp: Path
) -> None:
    src = e2e_tmp / "skopeo-src"
    layout = OciLayout(src)
    image = layout.add_image(
        {"etc/skopeo.txt": b"copied by skopeo\n", "usr/share/e2e/blob.bin": bytes(range(256)) * 64}
    )
    layout.tag("1.0", OCI_MANIFEST, image.manifest_digest, len(image.manifest))

    dest = f"docker://{module_registry.host}/e2e/skopeo:1.0"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{src}:1.0", dest)

    raw = skopeo("inspect", "--tls-verify=false", "--raw", dest)
    assert sha256_digest(raw.encode()) == image.manifest_digest
    assert json.loads(raw) == json.loads(image.manifest)

    inspected = json.loads(skopeo("inspect", "--tls-verify=false", dest))
    assert inspected["Digest"] == image.manifest_digest
    assert inspected["Layers"] == image.layer_digests

    resp = get_manifest(module_registry, "e2e/skopeo", "1.0")
    assert resp.status == 200
    assert resp.headers.get("docker-content-digest") == image.manifest_digest
    assert resp.headers.get("content-type") == OCI_MANIFEST
    assert resp.body == image.manifest
    assert "1.0" in list_tags(module_registry, "e2e/skopeo")

    back = e2e_tmp / "skopeo-back"
    skopeo("copy", "--src-tls-verify=false", dest, f"oci:{back}:out")
    assert layout_ref_digest(back, "out") == image.manifest_digest
    expected_blobs = {image.manifest_digest, image.config_digest, *image.layer_digests}
    assert layout_blob_digests(back) == expected_blobs
    for digest in expected_blobs:
        name = digest.split(":", 1)[1]
        assert (back / "blobs/sha256" / name).read_bytes() == (
            src / "blobs/sha256" / name
        ).read_bytes()

    # More tags on the same manifest, listed by skopeo (which follows Link pagination).
    extra = [f"t{i:03d}" for i in range(40)]
    for tag in extra:
        put = http(
            "PUT",
            f"{module_registry.url}/v2/e2e/skopeo/manifests/{tag}",
            data=image.manifest,
            headers={"Content-Type": OCI_MANIFEST},
        )
        assert put.status == 201, (tag, put.status, put.body)
        assert put.headers.get("docker-content-digest") == image.manifest_digest
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", dest.rsplit(":", 1)[0]))
    assert sorted(listed["Tags"]) == sorted(["1.0", *extra])

    skopeo("delete", "--tls-verify=false", dest)
    by_digest = get_manifest(module_registry, "e2e/skopeo", image.manifest_digest)
    assert by_digest.status == 404, (by_digest.status, by_digest.body)
    for tag in ("1.0", *extra[:3]):
        by_tag = get_manifest(module_registry, "e2e/skopeo", tag)
        assert by_tag.status == 404, (tag, by_tag.status, by_tag.body)
    gone = skopeo("inspect", "--tls-verify=false", "--raw", dest, check=False)
    assert gone == ""


def test_skopeo_copy_all_multi_platform_index(
    skopeo: Skopeo, module_registry: RegistryProcess, e2e_tmp: Path
) -> None:
    src = e2e_tmp / "multi-src"
    layout = OciLayout(src)
    amd64 = layout.add_image({"etc/arch": b"amd64\n"}, arch="amd64")
    arm64 = layout.add_image({"etc/arch": b"arm64\n"}, arch="arm64")
    index, index_digest = layout.add_index([amd64, arm64])
    layout.tag("multi", OCI_INDEX, index_digest, len(index))

    dest = f"docker://{module_registry.host}/e2e/multi:2.0"
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{src}:multi", dest)

    raw = skopeo("inspect", "--tls-verify=false", "--raw", dest)
    assert sha256_digest(raw.encode()) == index_digest
    resp = get_manifest(module_registry, "e2e/multi", "2.0")
    assert resp.status == 200
    assert resp.headers.get("content-type") == OCI_INDEX
    assert resp.headers.get("docker-content-digest") == index_digest
    assert resp.body == index

    for child in (amd64, arm64):
        child_resp = get_manifest(module_registry, "e2e/multi", child.manifest_digest)
        assert child_resp.status == 200, child.platform
        assert child_resp.body == child.manifest
        for blob in (child.config_digest, *child.layer_digests):
            head = http("HEAD", f"{module_registry.url}/v2/e2e/multi/blobs/{blob}")
            assert head.status == 200, blob

    # A platform-specific copy resolves the index to the arm64 manifest.
    arm_out = e2e_tmp / "multi-arm"
    skopeo(
        "copy",
        "--src-tls-verify=false",
        "--override-arch=arm64",
        "--override-os=linux",
        dest,
        f"oci:{arm_out}:arm",
    )
    assert layout_ref_digest(arm_out, "arm") == arm64.manifest_digest

    back = e2e_tmp / "multi-back"
    skopeo("copy", "--all", "--src-tls-verify=false", dest, f"oci:{back}:multi")
    assert layout_ref_digest(back, "multi") == index_digest
    assert layout_blob_digests(back) == layout_blob_digests(src)
