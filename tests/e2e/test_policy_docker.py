"""Policy through the real docker client: the refusal and its reason reach `docker push` and
`docker pull` output."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import DockerDaemon, make_rootfs_tar
from tests.server_process import RegistryProcess, start_registry

pytestmark = pytest.mark.e2e

POLICY = """\
version: 1
rules:
  - name: release tags are immutable
    match: {repositories: ["**"], tags: ["v*"], on: [push, delete]}
    require: {immutable_tags: true}
  - name: quarantined until reviewed
    match: {repositories: ["e2e/quarantine"], on: [pull]}
    require: {annotations: {com.example.reviewed: "^yes$"}}
"""


@pytest.fixture(scope="module")
def policy_registry(e2e_tmp: Path) -> Iterator[RegistryProcess]:
    """A Trustyard process enforcing POLICY."""
    policy = e2e_tmp / "policy.yaml"
    policy.write_text(POLICY)
    server = start_registry(e2e_tmp / "policy-data", extra_args=["--policy", str(policy)])
    try:
        yield server
    finally:
        server.stop()


def imported(dockerd: DockerDaemon, e2e_tmp: Path, ref: str, content: bytes) -> None:
    """A one-layer image made with `docker import`, tagged `ref`."""
    tarball = e2e_tmp / "policy-image.tar"
    tarball.write_bytes(make_rootfs_tar({"etc/policy-e2e": content}))
    dockerd.docker("import", str(tarball), ref)


def decisions(registry: RegistryProcess, **query: str) -> list[dict[str, object]]:
    url = f"{registry.url}/api/v1/decisions?" + "&".join(f"{k}={v}" for k, v in query.items())
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())["decisions"]


def test_docker_push_to_an_immutable_tag_is_refused_with_the_reason(
    dockerd: DockerDaemon, policy_registry: RegistryProcess, e2e_tmp: Path
) -> None:
    ref = f"{policy_registry.host}/e2e/policy:v1"
    imported(dockerd, e2e_tmp, ref, b"first\n")
    first = dockerd.docker("push", ref).stdout
    assert "digest: sha256:" in first
    # Pushing the very same image again is fine: the tag does not move.
    dockerd.docker("push", ref)
    imported(dockerd, e2e_tmp, ref, b"second, different\n")
    refused = dockerd.docker("push", ref, check=False)
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert 'denied: rule "release tags are immutable": tag v1 already points to sha256:' in output
    assert "push a new tag" in output
    denied = decisions(policy_registry, outcome="deny", repository="e2e/policy")
    assert [d["rule"] for d in denied] == ["release tags are immutable"]
    # A new tag is the way out.
    new_ref = f"{policy_registry.host}/e2e/policy:v2"
    dockerd.docker("tag", ref, new_ref)
    dockerd.docker("push", new_ref)


def test_docker_pull_of_a_quarantined_image_is_refused_with_the_reason(
    dockerd: DockerDaemon, policy_registry: RegistryProcess, e2e_tmp: Path
) -> None:
    ref = f"{policy_registry.host}/e2e/quarantine:latest"
    imported(dockerd, e2e_tmp, ref, b"unreviewed\n")
    dockerd.docker("push", ref)
    dockerd.docker("rmi", "--force", ref, check=False)
    refused = dockerd.docker("pull", ref, check=False)
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert 'rule "quarantined until reviewed": manifest annotation com.example.reviewed' in output
    url = f"{policy_registry.url}/api/v1/images/e2e/quarantine/latest/status"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "quarantined"
