"""Shared helpers and fixtures for the end-to-end tests with real registry clients.

Every process started here is stopped by PID, every temporary directory is removed, and
everything listens on 127.0.0.1 (or a private unix socket) only.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.dockerd import PrivateDockerd, docker_available, start_dockerd, xdist_worker
from tests.server_process import RegistryProcess

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
#: The line `docker push` prints at the end: "TAG: digest: sha256:... size: N".
PUSH_DIGEST = re.compile(r"^(\S+): digest: (sha256:[0-9a-f]{64}) size: (\d+)$", re.MULTILINE)
ALL_MANIFEST_TYPES = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])


# --------------------------------------------------------------------------- processes


def require_binary(name: str, *candidates: str) -> str:
    """Return the path of an executable, or skip the test when it is not installed (a failure
    under TRUSTYARD_REQUIRE_E2E=1, as in CI: see tests/conftest.py)."""
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"`{name}` is not installed (run .ci/install-e2e-deps.sh)")
    return found


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 180.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a client command; on failure, fail the test with its full output."""
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(
            list(cmd),
            env=full_env,
            cwd=cwd,
            capture_output=True,
            timeout=timeout,
            text=True,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"command timed out after {timeout}s: {' '.join(cmd)}\n{exc.output!r}")
    if check and proc.returncode != 0:
        pytest.fail(
            f"command failed with exit code {proc.returncode}: {' '.join(cmd)}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


# --------------------------------------------------------------------------- HTTP


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def http(
    method: str, url: str, *, headers: Mapping[str, str] | None = None, data: bytes | None = None
) -> Response:
    """One plain HTTP request with urllib; 4xx/5xx answers are returned, not raised."""
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return Response(
                resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
            )
    except urllib.error.HTTPError as err:
        return Response(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def get_manifest(registry: RegistryProcess, name: str, reference: str) -> Response:
    return http(
        "GET",
        f"{registry.url}/v2/{name}/manifests/{reference}",
        headers={"Accept": ALL_MANIFEST_TYPES},
    )


def list_tags(registry: RegistryProcess, name: str) -> list[str]:
    resp = http("GET", f"{registry.url}/v2/{name}/tags/list")
    assert resp.status == 200, f"GET /v2/{name}/tags/list -> {resp.status} {resp.body!r}"
    doc = resp.json()
    assert isinstance(doc, dict)
    assert doc.get("name") == name, doc
    return list(doc.get("tags") or [])


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- images


def make_rootfs_tar(files: Mapping[str, bytes]) -> bytes:
    """A deterministic uncompressed tar of regular files (parent directories included)."""
    buf = io.BytesIO()
    seen_dirs: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(files):
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                directory = "/".join(parts[:i])
                if directory in seen_dirs:
                    continue
                seen_dirs.add(directory)
                info = tarfile.TarInfo(directory)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                info.mtime = 1_700_000_000
                tar.addfile(info)
            content = files[path]
            info = tarfile.TarInfo(path)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def read_from_layer(layer: bytes, path: str) -> bytes:
    """The content of `path` in a layer blob (tar, or gzip-compressed tar)."""
    if layer[:2] == b"\x1f\x8b":
        layer = gzip.decompress(layer)
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        member = tar.extractfile(path.lstrip("/"))
        assert member is not None, f"{path} is not a regular file in the layer"
        return member.read()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


@dataclass
class OciImage:
    """One single-platform image as it lies in an OCI layout."""

    manifest: bytes
    manifest_digest: str
    config_digest: str
    layer_digests: list[str]
    platform: dict[str, str]

    @property
    def descriptor(self) -> dict[str, object]:
        return {
            "mediaType": OCI_MANIFEST,
            "digest": self.manifest_digest,
            "size": len(self.manifest),
            "platform": self.platform,
        }


class OciLayout:
    """Write an OCI image layout directory (oci-layout, index.json, blobs/sha256/...)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self.entries: list[dict[str, object]] = []

    def add_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        (self.root / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
        return digest

    def add_image(
        self, files: Mapping[str, bytes], *, arch: str = "amd64", os_name: str = "linux"
    ) -> OciImage:
        layer_tar = make_rootfs_tar(files)
        layer = gzip_bytes(layer_tar)
        layer_digest = self.add_blob(layer)
        config = json.dumps(
            {
                "architecture": arch,
                "os": os_name,
                "config": {"Env": ["PATH=/usr/bin:/bin"], "Labels": {"e2e": "trustyard"}},
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer_tar)]},
                "history": [{"created_by": "trustyard e2e test"}],
            },
            sort_keys=True,
        ).encode()
        config_digest = self.add_blob(config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [
                    {"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": len(layer)}
                ],
            },
            sort_keys=True,
        ).encode()
        manifest_digest = self.add_blob(manifest)
        return OciImage(
            manifest,
            manifest_digest,
            config_digest,
            [layer_digest],
            {"architecture": arch, "os": os_name},
        )

    def add_index(self, images: Sequence[OciImage]) -> tuple[bytes, str]:
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [image.descriptor for image in images],
            },
            sort_keys=True,
        ).encode()
        return index, self.add_blob(index)

    def tag(self, ref_name: str, media_type: str, digest: str, size: int) -> None:
        self.entries.append(
            {
                "mediaType": media_type,
                "digest": digest,
                "size": size,
                "annotations": {"org.opencontainers.image.ref.name": ref_name},
            }
        )
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries}
        (self.root / "index.json").write_text(json.dumps(index, indent=2))


def layout_blob_digests(root: Path) -> set[str]:
    return {"sha256:" + p.name for p in (root / "blobs" / "sha256").iterdir()}


def layout_ref_digest(root: Path, ref_name: str) -> str:
    index = json.loads((root / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref_name:
            return str(entry["digest"])
    raise AssertionError(f"{ref_name!r} not in {root}/index.json: {index}")


# --------------------------------------------------------------------------- clients


@dataclass
class ContainersConfig:
    """Private configuration for containers/image clients (skopeo, podman)."""

    env: dict[str, str]
    policy: Path


class DockerDaemon:
    """The session's private dockerd; its `docker()` fails the test on a non-zero exit."""

    def __init__(self, daemon: PrivateDockerd) -> None:
        self.daemon = daemon
        self.client = daemon.client
        self.env = daemon.env

    def docker(
        self, *args: str, check: bool = True, timeout: float = 180.0
    ) -> subprocess.CompletedProcess[str]:
        return run([self.client, *args], env=self.env, check=check, timeout=timeout)


class Podman:
    """podman with private storage (vfs), run dir, tmp dir and config: no daemon, no cgroups."""

    def __init__(self, binary: str, base: Path, config: ContainersConfig) -> None:
        self.binary = binary
        self.base = base
        self.config = config
        for sub in ("root", "run", "tmp", "xdg-run", "xdg-config", "xdg-data"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "xdg-run").chmod(0o700)
        (base / "containers.conf").write_text(
            '[engine]\nevents_logger = "file"\ncgroup_manager = "cgroupfs"\n'
        )
        self.env = {
            **config.env,
            "CONTAINERS_CONF": str(base / "containers.conf"),
            "XDG_RUNTIME_DIR": str(base / "xdg-run"),
            "XDG_CONFIG_HOME": str(base / "xdg-config"),
            "XDG_DATA_HOME": str(base / "xdg-data"),
            "TMPDIR": str(base / "tmp"),
        }

    def __call__(self, *args: str, check: bool = True) -> str:
        return self.proc(*args, check=check).stdout

    def proc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [
            self.binary,
            "--root",
            str(self.base / "root"),
            "--runroot",
            str(self.base / "run"),
            "--tmpdir",
            str(self.base / "tmp"),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            *args,
        ]
        return run(cmd, env=self.env, check=check)

    def reset(self) -> None:
        """Drop every local image (podman has no daemon: nothing else to stop)."""
        self("rmi", "--all", "--force", check=False)


def repo_digests(dockerd: DockerDaemon, ref: str) -> list[str]:
    out = dockerd.docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref).stdout
    return list(json.loads(out) or [])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def e2e_tmp() -> Iterator[Path]:
    """A short temporary directory (unix socket paths must stay under ~100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ty-e2e-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def containers_config(e2e_tmp: Path) -> ContainersConfig:
    """Isolate skopeo/podman from the host's registries.conf, auth file and trust policy."""
    conf = e2e_tmp / "containers"
    conf.mkdir()
    policy = conf / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    registries = conf / "registries.conf"
    registries.write_text('unqualified-search-registries = []\nshort-name-mode = "disabled"\n')
    auth = conf / "auth.json"
    auth.write_text('{"auths": {}}')
    env = {
        "CONTAINERS_REGISTRIES_CONF": str(registries),
        "REGISTRY_AUTH_FILE": str(auth),
        "TMPDIR": str(e2e_tmp),
    }
    return ContainersConfig(env, policy)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[DockerDaemon]:
    """A private dockerd (vfs, no networking setup) on its own unix socket.

    dockerd starts its own containerd under its --exec-root; both are stopped by PID at the end.
    """
    if docker_available() is None:
        pytest.skip("dockerd, docker or containerd is not installed (run .ci/install-e2e-deps.sh)")
    try:
        daemon = start_dockerd(
            ("vfs",),
            namespace=f"ty-e2e{xdist_worker()}",
            prefix="ty-dk-",
        )
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"dockerd did not become ready: {exc}")
    try:
        yield DockerDaemon(daemon)
    finally:
        daemon.stop()
