"""Exemption by appearance and parser differentials, through the real clients: a runnable,
unlabelled image dressed as a signature or an artifact is refused to `docker pull` and
`skopeo copy` with DENIED naming the rule (and, in a repository no rule covers, the same client
takes it: the disguise fools nobody but a registry that judges by appearance); a manifest that
Go and Python would read differently is refused at push, so no client can pull the smuggled
pair."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    ContainersConfig,
    DockerDaemon,
    Podman,
    gzip_bytes,
    http,
    make_rootfs_tar,
    require_binary,
    run,
    sha256_digest,
)
from tests.server_process import RegistryProcess, start_registry

pytestmark = pytest.mark.e2e

POLICY = """\
version: 1
rules:
  - name: provenance
    match: {repositories: ["e2e/**"], on: [pull]}
    require:
      labels: {org.opencontainers.image.source: "^https://git.example.com/"}
"""
DENIED = 'denied: rule "provenance": label org.opencontainers.image.source missing'
SIG_TAG = "sha256-" + "cd" * 32 + ".sig"


@pytest.fixture(scope="module")
def registry(e2e_tmp: Path) -> Iterator[RegistryProcess]:
    folder = e2e_tmp / "failclosed-policy"
    folder.mkdir()
    (folder / "policy.yaml").write_text(POLICY)
    server = start_registry(
        e2e_tmp / "failclosed-data", extra_args=["--policy", str(folder / "policy.yaml")]
    )
    try:
        yield server
    finally:
        server.stop()


def upload(registry: RegistryProcess, name: str, data: bytes) -> dict[str, Any]:
    digest = sha256_digest(data)
    resp = http(
        "POST",
        f"{registry.url}/v2/{name}/blobs/uploads/?digest={digest}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert resp.status == 201, (resp.status, resp.body)
    return {"digest": digest, "size": len(data)}


def runnable(
    registry: RegistryProcess, name: str, marker: str, labels: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Upload a real one-layer linux/amd64 image's blobs; its config and layer descriptors."""
    tar = make_rootfs_tar({"etc/failclosed": marker.encode()})
    layer = gzip_bytes(tar)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Labels": labels or {}},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar)]},
        }
    ).encode()
    return upload(registry, name, config), {
        "mediaType": OCI_LAYER_GZIP,
        **upload(registry, name, layer),
    }


def put(registry: RegistryProcess, name: str, tag: str, body: bytes) -> tuple[int, Any]:
    resp = http(
        "PUT",
        f"{registry.url}/v2/{name}/manifests/{tag}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    return resp.status, json.loads(resp.body) if resp.body else None


def disguised(registry: RegistryProcess, name: str, disguise: str) -> str:
    """Push an unlabelled runnable image wearing `disguise`; the tag to pull it by."""
    config, layer = runnable(registry, name, disguise)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **config},
        "layers": [layer],
    }
    tag = "v1"
    if disguise == "subject":
        missing = sha256_digest(b"no such image")
        manifest["subject"] = {"mediaType": OCI_MANIFEST, "digest": missing, "size": 13}
    elif disguise == "cosign-tag":
        tag = SIG_TAG
    elif disguise == "json-config":
        manifest["config"]["mediaType"] = "application/json"
    status, body = put(registry, name, tag, json.dumps(manifest).encode())
    assert status == 201, body
    return tag


DISGUISES = ["subject", "cosign-tag", "json-config"]


@pytest.mark.parametrize("disguise", DISGUISES)
def test_docker_pull_of_a_disguised_image_is_denied(
    dockerd: DockerDaemon, registry: RegistryProcess, disguise: str
) -> None:
    name = f"e2e/docker-{disguise}"
    tag = disguised(registry, name, disguise)
    pulled = dockerd.docker("pull", f"{registry.host}/{name}:{tag}", check=False)
    assert pulled.returncode != 0
    assert DENIED in pulled.stdout + pulled.stderr
    # The control, where no rule applies: docker takes the disguised image as an image.
    control_name = f"open/docker-{disguise}"
    control = f"{registry.host}/{control_name}:{disguised(registry, control_name, disguise)}"
    dockerd.docker("pull", control)
    dockerd.docker("rmi", "--force", control, check=False)


class Skopeo:
    def __init__(self, binary: str, config: ContainersConfig) -> None:
        self.binary, self.config = binary, config

    def __call__(self, *args: str) -> Any:
        cmd = [self.binary, "--policy", str(self.config.policy), *args]
        return run(cmd, env=self.config.env, check=False)


@pytest.fixture(scope="module")
def skopeo(containers_config: ContainersConfig) -> Skopeo:
    return Skopeo(require_binary("skopeo"), containers_config)


@pytest.mark.parametrize("disguise", DISGUISES)
def test_skopeo_copy_of_a_disguised_image_is_denied(
    skopeo: Skopeo, registry: RegistryProcess, e2e_tmp: Path, disguise: str
) -> None:
    name = f"e2e/skopeo-{disguise}"
    tag = disguised(registry, name, disguise)
    copied = skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{registry.host}/{name}:{tag}",
        f"oci:{e2e_tmp / ('skopeo-out-' + disguise)}:out",
    )
    assert copied.returncode != 0
    # skopeo quotes its error message: its inner quotes come back-slashed.
    assert DENIED in (copied.stdout + copied.stderr).replace('\\"', '"')
    control = f"open/skopeo-{disguise}"
    tag = disguised(registry, control, disguise)
    copied = skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{registry.host}/{control}:{tag}",
        f"oci:{e2e_tmp / ('skopeo-control-' + disguise)}:out",
    )
    assert copied.returncode == 0, copied.stderr


def test_a_smuggled_pair_is_refused_and_cannot_be_pulled(
    dockerd: DockerDaemon, skopeo: Skopeo, registry: RegistryProcess, e2e_tmp: Path
) -> None:
    """Benign labelled `config`/`layers` for Python, unlabelled `Config`/`Layers` for Go."""
    name = "e2e/smuggled"
    labels = {"org.opencontainers.image.source": "https://git.example.com/app"}
    good_config, good_layer = runnable(registry, name, "benign", labels)
    evil_config, evil_layer = runnable(registry, name, "smuggled")
    text = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **good_config},
            "layers": [good_layer],
        }
    )
    smuggled = (
        text[:-1]
        + ', "Config": '
        + json.dumps({"mediaType": OCI_CONFIG, **evil_config})
        + ', "Layers": '
        + json.dumps([evil_layer])
        + "}"
    ).encode()
    status, body = put(registry, name, "v1", smuggled)
    assert status == 400
    assert body["errors"][0]["code"] == "MANIFEST_INVALID"
    assert '"Config"' in body["errors"][0]["detail"]["reason"]
    pulled = dockerd.docker("pull", f"{registry.host}/{name}:v1", check=False)
    assert pulled.returncode != 0
    assert "manifest unknown" in (pulled.stdout + pulled.stderr).lower()
    copied = skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{registry.host}/{name}:v1",
        f"oci:{e2e_tmp / 'smuggled-out'}:out",
    )
    assert copied.returncode != 0
    assert "manifest unknown" in (copied.stdout + copied.stderr).lower()


def test_podman_pull_of_a_tar_typed_as_a_signature_is_denied(
    registry: RegistryProcess, containers_config: ContainersConfig, e2e_tmp: Path
) -> None:
    """podman unpacks a tar whatever its layer's media type says: a "signature" whose payload is
    an archive is an image, judged as one. Outside the rule's repositories (the control) podman
    pulls it, so the denial is the policy's doing."""
    podman = Podman(require_binary("podman"), e2e_tmp / "pm", containers_config)
    tar = make_rootfs_tar({"bin/smuggled": b"#!/bin/sh\necho smuggled\n"})
    for name in ("e2e/sig-tar", "open/sig-tar"):
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar)]},
            }
        ).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **upload(registry, name, config)},
            "layers": [
                {
                    "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    **upload(registry, name, tar),
                }
            ],
        }
        status, body = put(registry, name, SIG_TAG, json.dumps(manifest).encode())
        assert status == 201, body
    try:
        refused = podman.proc(
            "pull", "--tls-verify=false", f"{registry.host}/e2e/sig-tar:{SIG_TAG}", check=False
        )
        assert refused.returncode != 0
        assert DENIED in (refused.stdout + refused.stderr).replace('\\"', '"')
        podman("pull", "--tls-verify=false", f"{registry.host}/open/sig-tar:{SIG_TAG}")
    finally:
        podman.reset()
