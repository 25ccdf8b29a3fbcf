"""Fixtures for the storage tests: stores over the session's real SeaweedFS S3 server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# The S3 section helper and the part size are imported from here by the storage tests. The
# SeaweedFS fixtures (`seaweed`, `storage_section`) are the root conftest's: one server per worker.
from tests.storage.s3_server import TEST_PART_SIZE, SeaweedS3, s3_storage

__all__ = ["TEST_PART_SIZE", "s3_storage"]


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


@pytest.fixture
async def registry(aiohttp_client: Any, tmp_path: Path, storage_section: dict[str, Any]) -> Any:
    """A registry app on a loopback socket over either backend, with its configuration."""
    from registry.app import create_app
    from tests.conftest import make_config
    from tests.storage.gc_helpers import Registry

    config = make_config(tmp_path / "data", storage=storage_section)
    return Registry(await aiohttp_client(create_app(config)), config)
