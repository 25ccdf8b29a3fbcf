"""Authentication with the real clients: docker login, podman login, skopeo with a robot token,
and skopeo over TLS against a certificate it is told to trust."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from registry.auth.users import UserStore
from tests.auth.tls import self_signed
from tests.e2e.conftest import (
    OCI_MANIFEST,
    ContainersConfig,
    DockerDaemon,
    OciLayout,
    Podman,
    get_manifest,
    http,
    make_rootfs_tar,
    require_binary,
    run,
)
from tests.server_process import RegistryProcess, start_registry

pytestmark = pytest.mark.e2e

ALICE_PASSWORD = "alice-e2e-password"
OLGA_PASSWORD = "olga-e2e-password"
PERMISSIONS = [
    {"namespace": "library/**", "anonymous": "pull", "authenticated": "pull"},
    {"namespace": "team-a/**", "groups": {"dev": "push"}},
    {"namespace": "ci/**", "groups": {"ci": "push"}},
    {"namespace": "**", "groups": {"ops": "admin"}},
]


def _write_setup(base: Path) -> tuple[Path, Path, str]:
    """Data directory, config file and the robot's token for an auth-enabled registry."""
    data_dir = base / "data"
    store = UserStore(data_dir / "auth" / "users.yaml")
    store.add_user("alice", ALICE_PASSWORD, ["dev"], replace=False)
    store.add_user("olga", OLGA_PASSWORD, ["ops"], replace=False)
    robot_token = store.add_robot("ci", ["ci"], replace=False)
    config = base / "trustyard.yaml"
    config.write_text(
        yaml.safe_dump({"auth": {"service": "trustyard-e2e", "permissions": PERMISSIONS}})
    )
    return data_dir, config, robot_token


@pytest.fixture(scope="module")
def auth_registry(e2e_tmp: Path) -> Iterator[tuple[RegistryProcess, str]]:
    """A Trustyard process with auth on, and the robot `ci`'s token."""
    data_dir, config, robot_token = _write_setup(e2e_tmp / "auth-plain")
    server = start_registry(data_dir, extra_args=["--config", str(config)])
    try:
        yield server, robot_token
    finally:
        server.stop()


def _docker_login(
    dockerd: DockerDaemon, host: str, user: str, password: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dockerd.client, "login", "--username", user, "--password-stdin", host],
        input=password + "\n",
        env={**os.environ, **dockerd.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _skopeo(config: ContainersConfig, *args: str, check: bool = True) -> str:
    binary = require_binary("skopeo")
    proc = run([binary, "--policy", str(config.policy), *args], env=config.env, check=check)
    return proc.stdout + proc.stderr


def _oci_layout(base: Path, text: bytes) -> Path:
    layout = OciLayout(base)
    image = layout.add_image({"etc/auth-e2e.txt": text})
    layout.tag("1.0", OCI_MANIFEST, image.manifest_digest, len(image.manifest))
    return base


def test_docker_login_push_pull_and_wrong_password(
    dockerd: DockerDaemon, auth_registry: tuple[RegistryProcess, str], e2e_tmp: Path
) -> None:
    registry, _ = auth_registry
    host = registry.host
    tarball = e2e_tmp / "auth-docker.tar"
    tarball.write_bytes(make_rootfs_tar({"etc/auth.txt": b"pushed after docker login\n"}))
    ref = f"{host}/team-a/app:v1"
    dockerd.docker("import", str(tarball), ref)

    refused = dockerd.docker("push", ref, check=False)
    assert refused.returncode != 0, "push without login must fail"

    wrong = _docker_login(dockerd, host, "alice", "not-the-password")
    assert wrong.returncode != 0
    assert "unauthorized" in (wrong.stderr + wrong.stdout).lower()

    login = _docker_login(dockerd, host, "alice", ALICE_PASSWORD)
    assert login.returncode == 0, login.stderr
    assert "Login Succeeded" in login.stdout
    try:
        dockerd.docker("push", ref)
        assert get_manifest(registry, "team-a/app", "v1").status == 401  # anonymous: challenged
        dockerd.docker("rmi", ref)
        dockerd.docker("pull", ref)

        # alice is in `dev`: she may not write elsewhere.
        other = f"{host}/secret/app:v1"
        dockerd.docker("tag", ref, other)
        denied = dockerd.docker("push", other, check=False)
        assert denied.returncode != 0
        assert "denied" in (denied.stderr + denied.stdout).lower()
        dockerd.docker("rmi", other)
    finally:
        dockerd.docker("logout", host, check=False)
        dockerd.docker("rmi", ref, check=False)

    # Logged out, the pull is challenged and refused.
    assert dockerd.docker("pull", ref, check=False).returncode != 0


def test_skopeo_with_robot_token(
    containers_config: ContainersConfig,
    auth_registry: tuple[RegistryProcess, str],
    e2e_tmp: Path,
) -> None:
    registry, robot_token = auth_registry
    src = _oci_layout(e2e_tmp / "auth-skopeo-src", b"copied by a robot\n")
    dest = f"docker://{registry.host}/ci/tool:1.0"

    without = _skopeo(
        containers_config, "copy", "--dest-tls-verify=false", f"oci:{src}:1.0", dest, check=False
    )
    assert "unauthorized" in without.lower() or "authentication required" in without.lower()

    creds = f"ci:{robot_token}"
    _skopeo(
        containers_config,
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        f"oci:{src}:1.0",
        dest,
    )
    inspected = _skopeo(
        containers_config, "inspect", "--tls-verify=false", "--creds", creds, "--raw", dest
    )
    assert OCI_MANIFEST in inspected

    # The robot's group writes ci/** only.
    elsewhere = _skopeo(
        containers_config,
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        f"oci:{src}:1.0",
        f"docker://{registry.host}/team-a/robot:1.0",
        check=False,
    )
    assert "denied" in elsewhere.lower() or "403" in elsewhere
    # A token is not a password: the token server refuses a wrong one.
    wrong = _skopeo(
        containers_config,
        "inspect",
        "--tls-verify=false",
        "--creds",
        "ci:tyr_not-the-token",
        dest,
        check=False,
    )
    assert "unauthorized" in wrong.lower() or "401" in wrong


def test_podman_login_push_and_wrong_password(
    e2e_tmp: Path,
    containers_config: ContainersConfig,
    auth_registry: tuple[RegistryProcess, str],
) -> None:
    registry, _ = auth_registry
    podman = Podman(require_binary("podman"), e2e_tmp / "auth-podman", containers_config)
    try:
        wrong = podman.proc(
            "login",
            "--tls-verify=false",
            "--username",
            "alice",
            "--password",
            "not-the-password",
            registry.host,
            check=False,
        )
        assert wrong.returncode != 0
        podman(
            "login",
            "--tls-verify=false",
            "--username",
            "alice",
            "--password",
            ALICE_PASSWORD,
            registry.host,
        )
        tarball = e2e_tmp / "auth-podman.tar"
        tarball.write_bytes(make_rootfs_tar({"etc/podman-auth.txt": b"pushed by podman\n"}))
        ref = f"{registry.host}/team-a/podman:v1"
        podman("import", str(tarball), ref)
        podman(
            "push", "--tls-verify=false", "--signature-policy", str(containers_config.policy), ref
        )
        tags = http(
            "GET",
            f"{registry.url}/v2/team-a/podman/tags/list",
            headers={"Authorization": "Basic " + _b64(f"olga:{OLGA_PASSWORD}")},
        )
        assert tags.status == 200
        assert tags.json() == {"name": "team-a/podman", "tags": ["v1"]}
        podman("logout", registry.host)
    finally:
        podman.reset()


def test_skopeo_over_tls_with_a_trusted_certificate(
    containers_config: ContainersConfig, e2e_tmp: Path
) -> None:
    base = e2e_tmp / "auth-tls"
    data_dir, config, robot_token = _write_setup(base)
    cert, key = self_signed(base / "certs")
    server = start_registry(
        data_dir,
        extra_args=["--config", str(config), "--tls-cert", str(cert), "--tls-key", str(key)],
    )
    try:
        assert server.url.startswith("https://")
        src = _oci_layout(base / "src", b"copied over TLS\n")
        dest = f"docker://{server.host}/ci/tls:1.0"
        _skopeo(
            containers_config,
            "copy",
            "--dest-cert-dir",
            str(cert.parent),
            "--dest-creds",
            f"ci:{robot_token}",
            f"oci:{src}:1.0",
            dest,
        )
        raw = _skopeo(
            containers_config,
            "inspect",
            "--cert-dir",
            str(cert.parent),
            "--creds",
            f"ci:{robot_token}",
            "--raw",
            dest,
        )
        assert OCI_MANIFEST in raw
        # Without trusting the certificate, verification fails.
        untrusted = _skopeo(
            containers_config, "inspect", "--creds", f"ci:{robot_token}", dest, check=False
        )
        assert "certificate" in untrusted.lower()
    finally:
        server.stop()


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()
