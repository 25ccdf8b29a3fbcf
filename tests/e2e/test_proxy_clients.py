"""Real clients pulling, through Trustyard, images that exist only upstream (the reference
registry with TLS from a private CA and htpasswd): docker with `registry-mirrors` (the default
upstream), podman with a `registries.conf` mirror under a path prefix, skopeo naming the prefix."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.auth.conftest import basic
from tests.e2e.conftest import ContainersConfig, Podman, make_rootfs_tar, require_binary, run
from tests.e2e.dockerd import docker_available, start_dockerd
from tests.proxy.upstreams import (
    PASSWORD,
    USER,
    ReferenceRegistry,
    Upstream,
    reference_registry,
)
from tests.server_process import RegistryProcess, start_registry

pytestmark = pytest.mark.e2e


@dataclass
class Setup:
    upstream: ReferenceRegistry
    trustyard: RegistryProcess
    images: dict[str, str]  # upstream name:tag -> manifest digest


@pytest.fixture(scope="module")
def proxied(e2e_tmp: Path) -> Iterator[Setup]:
    """The reference registry holding three images, and a Trustyard proxying it under
    `mirror.test/` and as the default upstream (unprefixed names but `e2e/**`)."""
    upstream = reference_registry(e2e_tmp / "upstream")
    client = Upstream(upstream.url, upstream.ca, basic(USER, PASSWORD))
    images = {}
    for name, text in (
        ("library/proxied", b"pulled by docker through a mirror\n"),
        ("team/podman", b"pulled by podman through a mirror\n"),
        ("team/skopeo", b"copied by skopeo through the prefix\n"),
    ):
        layer = make_rootfs_tar({"etc/proxied.txt": text})
        digest, _ = asyncio.run(client.push_image(name, "v1", [layer]))
        images[f"{name}:v1"] = digest
    folder = e2e_tmp / "proxy-config"
    folder.mkdir()
    (folder / "upstream-password").write_text(PASSWORD)
    assert upstream.ca is not None
    config = {
        "upstreams": [
            {
                "name": "ref",
                "url": upstream.url,
                "prefix": "mirror.test",
                "username": USER,
                "password_file": str(folder / "upstream-password"),
                "ca_file": str(upstream.ca.ca_file),
            }
        ],
        "proxy": {"default_upstream": "ref", "local_namespaces": ["e2e/**"]},
    }
    (folder / "trustyard.yaml").write_text(json.dumps(config))
    trustyard = start_registry(
        e2e_tmp / "proxy-data", extra_args=["--config", str(folder / "trustyard.yaml")]
    )
    try:
        yield Setup(upstream, trustyard, images)
    finally:
        trustyard.stop()
        upstream.stop()


def test_skopeo_copies_through_the_path_prefix(
    proxied: Setup, containers_config: ContainersConfig, e2e_tmp: Path
):
    skopeo = require_binary("skopeo")
    source = f"docker://{proxied.trustyard.host}/mirror.test/team/skopeo:v1"
    digest = run(
        [
            skopeo,
            "--policy",
            str(containers_config.policy),
            "inspect",
            "--format",
            "{{.Digest}}",
            "--tls-verify=false",
            source,
        ],
        env=containers_config.env,
    ).stdout
    assert digest.strip() == proxied.images["team/skopeo:v1"]
    target = e2e_tmp / "skopeo-proxied"
    run(
        [
            skopeo,
            "--policy",
            str(containers_config.policy),
            "copy",
            "--src-tls-verify=false",
            "--preserve-digests",
            source,
            f"oci:{target}:v1",
        ],
        env=containers_config.env,
    )
    index = json.loads((target / "index.json").read_text())
    assert index["manifests"][0]["digest"] == proxied.images["team/skopeo:v1"]


def test_podman_pulls_through_a_registries_conf_mirror(
    proxied: Setup, containers_config: ContainersConfig, e2e_tmp: Path
):
    base = e2e_tmp / "podman-proxy"
    registries = base / "registries.conf"
    base.mkdir()
    # Podman asks the mirror first: `upstream.test` does not even resolve, so only the mirror
    # can answer.
    registries.write_text(
        'unqualified-search-registries = []\nshort-name-mode = "disabled"\n\n'
        '[[registry]]\nprefix = "upstream.test"\nlocation = "upstream.test"\n\n'
        f'[[registry.mirror]]\nlocation = "{proxied.trustyard.host}/mirror.test"\n'
        "insecure = true\n"
    )
    config = ContainersConfig(
        {**containers_config.env, "CONTAINERS_REGISTRIES_CONF": str(registries)},
        containers_config.policy,
    )
    podman = Podman(require_binary("podman"), base, config)
    try:
        podman("pull", "--signature-policy", str(config.policy), "upstream.test/team/podman:v1")
        digest = podman(
            "image", "inspect", "--format", "{{.Digest}}", "upstream.test/team/podman:v1"
        )
        assert digest.strip() == proxied.images["team/podman:v1"]
    finally:
        podman.reset()
        shutil.rmtree(base / "root", ignore_errors=True)


def test_docker_and_containerd_pull_through_mirrors(proxied: Setup):
    if docker_available() is None:
        pytest.skip("dockerd, docker or containerd is not installed (run .ci/install-e2e-deps.sh)")
    daemon = start_dockerd(
        ("vfs",),
        namespace="ty-proxy",
        prefix="ty-px-",
        extra_args=(f"--registry-mirror=http://{proxied.trustyard.host}",),
    )
    try:
        # `proxied` is Docker Hub's `library/proxied`: docker asks its mirror, Trustyard asks
        # its default upstream (the image exists nowhere else).
        pulled = daemon.docker("pull", "proxied:v1", timeout=300)
        assert pulled.returncode == 0, pulled.stderr + daemon.log_tail()
        inspect = daemon.docker(
            "image", "inspect", "--format", "{{json .RepoDigests}}", "proxied:v1"
        )
        assert inspect.returncode == 0, inspect.stderr
        assert f"proxied@{proxied.images['library/proxied:v1']}" in json.loads(inspect.stdout)
        # containerd (dockerd's own) with a hosts.toml mirror under the path prefix.
        hosts = daemon.root / "certs.d" / "docker.io"
        hosts.mkdir(parents=True)
        (hosts / "hosts.toml").write_text(
            'server = "https://registry-1.docker.io"\n\n'
            f'[host."http://{proxied.trustyard.host}/v2/mirror.test"]\n'
            '  capabilities = ["pull", "resolve"]\n'
            "  override_path = true\n"
        )
        sockets = list((daemon.root / "ex").rglob("containerd.sock"))
        assert sockets, "dockerd started no containerd"
        ctr = require_binary("ctr")
        pulled = run(
            [
                ctr,
                "--address",
                str(sockets[0]),
                "--namespace",
                "ty-proxy-ctr",
                "images",
                "pull",
                "--hosts-dir",
                str(daemon.root / "certs.d"),
                "docker.io/team/podman:v1",
            ],
            env={},
        )
        listed = run(
            [ctr, "--address", str(sockets[0]), "--namespace", "ty-proxy-ctr", "images", "ls"],
            env={},
        ).stdout
        assert proxied.images["team/podman:v1"] in listed, pulled.stdout + listed
    finally:
        daemon.stop()
