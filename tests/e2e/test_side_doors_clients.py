"""Side doors through the real clients: docker and skopeo cannot get the layers of a quarantined
image by pulling an index child by digest, nor through another repository by a cross-repository
mount; a pusher who holds the bytes is not hindered."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    OCI_INDEX,
    OCI_MANIFEST,
    ContainersConfig,
    DockerDaemon,
    OciLayout,
    http,
    make_rootfs_tar,
    require_binary,
    run,
)
from tests.server_process import RegistryProcess, start_registry

pytestmark = pytest.mark.e2e

POLICY = """\
version: 1
rules:
  - name: prod images are reviewed
    match: {repositories: ["sd/prod"], on: [pull]}
    require: {annotations: {com.example.reviewed: "^yes$"}}
  - name: releases are reviewed
    match: {repositories: ["sd/rel"], tags: ["v*"], on: [pull]}
    require: {annotations: {com.example.reviewed: "^yes$"}}
"""


class Skopeo:
    def __init__(self, binary: str, config: ContainersConfig) -> None:
        self.binary = binary
        self.config = config

    def __call__(self, *args: str, check: bool = True) -> tuple[int, str]:
        cmd = [self.binary, "--policy", str(self.config.policy), *args]
        proc = run(cmd, env=self.config.env, check=check)
        # skopeo's log line quotes the registry's message: unescape its quotes.
        return proc.returncode, (proc.stdout + proc.stderr).replace('\\"', '"')


@pytest.fixture(scope="module")
def skopeo(containers_config: ContainersConfig) -> Skopeo:
    return Skopeo(require_binary("skopeo"), containers_config)


@pytest.fixture(scope="module")
def registry(e2e_tmp: Path) -> Iterator[RegistryProcess]:
    policy = e2e_tmp / "side-doors-policy.yaml"
    policy.write_text(POLICY)
    server = start_registry(e2e_tmp / "side-doors-data", extra_args=["--policy", str(policy)])
    try:
        yield server
    finally:
        server.stop()


def denied_blob_reads(registry: RegistryProcess, repository: str) -> list[dict[str, object]]:
    """The decision log's refused reads of blobs (their reference is the blob's digest)."""
    url = f"{registry.url}/api/v1/decisions?outcome=deny&repository={repository}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        rows = json.loads(resp.read())["decisions"]
    return [
        r
        for r in rows
        if r["action"] == "pull"
        and str(r["reference"]).startswith("sha256:")
        and r["reference"] != r["digest"]
    ]


def test_skopeo_cannot_mount_quarantined_layers_into_another_repository(
    skopeo: Skopeo, registry: RegistryProcess, e2e_tmp: Path
) -> None:
    """skopeo remembers where it pushed each blob and mounts from there when it pushes the same
    digests elsewhere, without reading its source. An attacker's layout that names the
    quarantined layer without holding it must not get it into an unpoliced repository."""
    src = e2e_tmp / "sd-quarantined"
    layout = OciLayout(src)
    image = layout.add_image({"etc/secret": b"quarantined content\n"})
    layout.tag("img", OCI_MANIFEST, image.manifest_digest, len(image.manifest))
    prod = f"docker://{registry.host}/sd/prod:v1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{src}:img", prod)
    code, output = skopeo("copy", "--src-tls-verify=false", prod, f"oci:{e2e_tmp}/x:y", check=False)
    assert code != 0 and 'rule "prod images are reviewed"' in output, output

    attacker = e2e_tmp / "sd-attacker"
    shutil.copytree(src, attacker)
    (layer,) = image.layer_digests
    (attacker / "blobs" / "sha256" / layer.split(":", 1)[1]).unlink()
    code, output = skopeo(
        "copy", "--dest-tls-verify=false", f"oci:{attacker}:img",
        f"docker://{registry.host}/sd/scratch:stolen", check=False,
    )  # fmt: skip
    assert code != 0, output
    assert http("HEAD", f"{registry.url}/v2/sd/scratch/blobs/{layer}").status == 404
    assert http("GET", f"{registry.url}/v2/sd/scratch/manifests/stolen").status == 404
    # The mount was asked for and refused, naming the rule of the quarantined image.
    refused = [r for r in denied_blob_reads(registry, "sd/prod") if r["reference"] == layer]
    assert refused and refused[0]["rule"] == "prod images are reviewed"


def test_index_children_of_a_quarantined_release_cannot_be_pulled_by_digest(
    skopeo: Skopeo, dockerd: DockerDaemon, registry: RegistryProcess, e2e_tmp: Path
) -> None:
    src = e2e_tmp / "sd-release"
    layout = OciLayout(src)
    child = layout.add_image({"etc/release": b"release content\n"}, arch="amd64")
    index, index_digest = layout.add_index([child])
    layout.tag("rel", OCI_INDEX, index_digest, len(index))
    dest = f"docker://{registry.host}/sd/rel"
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{src}:rel", f"{dest}:v1")

    # The tag is refused; its child, untagged, passes the manifest check, but not its blobs.
    code, output = skopeo(
        "copy", "--src-tls-verify=false", f"{dest}:v1", f"oci:{e2e_tmp}/o:x", check=False
    )
    assert code != 0 and 'rule "releases are reviewed"' in output, output
    by_digest = f"{dest}@{child.manifest_digest}"
    code, output = skopeo(
        "copy", "--src-tls-verify=false", by_digest, f"oci:{e2e_tmp}/o:y", check=False
    )
    # skopeo prints only the status of a refused blob (it does not read the error body).
    assert code != 0 and "403 (Forbidden)" in output, output
    assert "reading blob sha256:" in output, output
    refused = [r["rule"] for r in denied_blob_reads(registry, "sd/rel")]
    assert refused and set(refused) == {"releases are reviewed"}, refused
    pulled = dockerd.docker("pull", f"{registry.host}/sd/rel@{child.manifest_digest}", check=False)
    assert pulled.returncode != 0
    assert 'rule "releases are reviewed"' in pulled.stdout + pulled.stderr

    # A reviewed release over the same child makes its content pullable: shared content stays
    # available to what the policy allows.
    reviewed = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [child.descriptor],
            "annotations": {"com.example.reviewed": "yes"},
        },
        sort_keys=True,
    ).encode()
    reviewed_digest = layout.add_blob(reviewed)
    layout.tag("reviewed", OCI_INDEX, reviewed_digest, len(reviewed))
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{src}:reviewed", f"{dest}:v2")
    skopeo(
        "copy", "--src-tls-verify=false", f"{dest}@{child.manifest_digest}", f"oci:{e2e_tmp}/ok:x"
    )


def test_docker_push_elsewhere_uploads_what_it_cannot_mount(
    dockerd: DockerDaemon, registry: RegistryProcess, e2e_tmp: Path
) -> None:
    """docker mounts layers from the repository it pushed them to before; refused, it uploads
    them itself (it holds the bytes), and the push succeeds."""
    tarball = e2e_tmp / "sd-docker.tar"
    tarball.write_bytes(make_rootfs_tar({"etc/side-door": b"docker layer\n"}))
    quarantined = f"{registry.host}/sd/prod:docker"
    dockerd.docker("import", str(tarball), quarantined)
    dockerd.docker("push", quarantined)
    before = len(denied_blob_reads(registry, "sd/prod"))
    elsewhere = f"{registry.host}/sd/elsewhere:copy"
    dockerd.docker("tag", quarantined, elsewhere)
    pushed = dockerd.docker("push", elsewhere)
    assert "digest: sha256:" in pushed.stdout
    assert "Mounted from" not in pushed.stdout
    assert len(denied_blob_reads(registry, "sd/prod")) > before  # the mount was refused
    dockerd.docker("rmi", "--force", quarantined, elsewhere, check=False)
    dockerd.docker("pull", elsewhere)
