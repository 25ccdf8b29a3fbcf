"""A registry application on a real loopback socket (pytest-aiohttp), one data dir per test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.app import create_app
from registry.config import Config, load_config

ClientFactory = Callable[..., Awaitable[TestClient]]


def make_config(data_dir: Path, **overrides: Any) -> Config:
    """A configuration for tests: defaults, this data dir, no environment."""
    return load_config(environ={}, overrides={"data_dir": str(data_dir), **overrides})


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def start_client(aiohttp_client: Any, data_dir: Path) -> ClientFactory:
    """Start (or restart) the registry on `data_dir`, with optional config overrides."""

    async def start(**overrides: Any) -> TestClient:
        return await aiohttp_client(create_app(make_config(data_dir, **overrides)))

    return start


@pytest.fixture
async def client(start_client: ClientFactory) -> TestClient:
    return await start_client()
