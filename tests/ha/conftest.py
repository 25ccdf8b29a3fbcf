"""Fixtures of the HA tests: one PostgreSQL (the session's) and one SeaweedFS S3 for the whole
directory, and one cluster on them (`cluster`: three replicas behind HAProxy, enforcing `POLICY`,
sending events to `hook`) shared by the modules that leave it whole (a replica a test kills is
started again by that test). The torture test, whose collections would race the others, starts
its own cluster on its own database and S3 prefix (`cluster_of`).

The containers configuration and the short temporary folder come from the end-to-end
fixtures; dockerd is the package's own, stopped when the package is done.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.e2e.conftest import DockerDaemon, containers_config, e2e_tmp  # noqa: F401 (fixtures)
from tests.e2e.dockerd import docker_available, start_dockerd
from tests.events.receiver import Receiver
from tests.ha.cluster import Cluster, haproxy_binary, start_cluster
from tests.ha.receiver_thread import ReceiverThread
from tests.postgres_server import PostgresServer
from tests.signing import public_pem
from tests.storage.s3_server import (
    ACCESS_KEY,
    SECRET_KEY,
    SeaweedS3,
    seaweed_in_temp_folder,
)

#: The smallest part S3 allows: a blob of a few MiB already spans several parts.
PART_SIZE = 5 * 1024 * 1024
BUCKET = "trustyard-ha"

#: What the package's cluster enforces: release tags of race/** are immutable, signed/** is
#: pulled only with a signature by `release_key`. Other repositories are open.
POLICY = """\
version: 1
trust:
  keys:
    release: {pem_file: release.pub}
rules:
  - name: release tags are immutable
    match: {repositories: ["race/**"], tags: ["v*"], on: [push, delete]}
    require: {immutable_tags: true}
  - name: signed is signed by release
    match: {repositories: ["signed/**"], on: [pull]}
    require:
      signature: {any_of: [release]}
"""
#: The HMAC key of the events endpoint.
SECRET = "ha-endpoint-secret-0123456789"


@pytest.fixture(scope="package")
def dockerd() -> Iterator[DockerDaemon]:
    """A private dockerd (vfs) on its own unix socket, for the HA tests only."""
    if docker_available() is None:
        pytest.skip("dockerd, docker or containerd is not installed (run .ci/install-e2e-deps.sh)")
    try:
        daemon = start_dockerd(("vfs",), namespace="ty-ha", prefix="ty-hadk-")
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"dockerd did not become ready: {exc}")
    try:
        yield DockerDaemon(daemon)
    finally:
        daemon.stop()


@pytest.fixture(scope="package")
def ha_seaweed() -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the HA tests, stopped by PID at the end."""
    with seaweed_in_temp_folder("ty-ha-s3-") as server:
        yield server


def s3_storage(server: SeaweedS3) -> dict[str, Any]:
    """The `storage` section of a cluster: the shared bucket, a prefix of its own."""
    return {
        "backend": "s3",
        "s3": {
            "endpoint_url": server.endpoint,
            "region": "us-east-1",
            "bucket": BUCKET,
            "prefix": f"ha-{uuid.uuid4().hex[:12]}",
            "addressing_style": "path",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "part_size": PART_SIZE,
            "connect_timeout": "2s",
            "read_timeout": "30s",
            "max_attempts": 2,
        },
    }


@contextlib.contextmanager
def cluster_of(
    postgres: PostgresServer,
    seaweed: SeaweedS3,
    *,
    replicas: int = 3,
    settings: dict[str, Any] | None = None,
    folder: Path | None = None,
) -> Iterator[Cluster]:
    """A cluster on a fresh database and S3 prefix, in a short folder (HAProxy's admin socket
    path must stay under ~100 bytes); stopped and removed at the end."""
    if haproxy_binary() is None:
        pytest.skip("HAProxy is not installed (bash .ci/install-e2e-deps.sh)")
    root = folder or Path(tempfile.mkdtemp(prefix="ty-ha-", dir="/tmp"))
    cluster = start_cluster(
        root,
        metadata_url=postgres.create_database(),
        storage=s3_storage(seaweed),
        replicas=replicas,
        settings=settings,
    )
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="package")
def release_key() -> ec.EllipticCurvePrivateKey:
    """The key `POLICY` trusts as `release`."""
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="package")
def hook() -> Iterator[ReceiverThread]:
    """The events endpoint every replica of `cluster` sends to."""
    thread = ReceiverThread(Receiver(secret=SECRET))
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture(scope="package")
def cluster(
    postgres: PostgresServer,
    ha_seaweed: SeaweedS3,
    release_key: ec.EllipticCurvePrivateKey,
    hook: ReceiverThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """Three replicas behind HAProxy on a fresh database and S3 prefix, enforcing `POLICY`,
    sending every event but pulls to `hook`."""
    folder = tmp_path_factory.mktemp("policy")
    (folder / "release.pub").write_bytes(public_pem(release_key))
    (folder / "policy.yaml").write_text(POLICY)
    settings: dict[str, Any] = {
        "policy": {"file": str(folder / "policy.yaml"), "reload": False},
        "events": {
            "endpoints": [
                {
                    "name": "hook",
                    "url": f"http://127.0.0.1:{hook.port}/hook",
                    "secret": SECRET,
                    "timeout": "5s",
                }
            ],
            "retry": {"initial": "100ms", "max": "300ms"},
            "pull_events": {"mode": "off"},
        },
    }
    with cluster_of(postgres, ha_seaweed, settings=settings) as running:
        yield running
