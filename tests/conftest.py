"""Fixtures shared by every test module."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.app import create_app
from registry.config import Config, load_config
from tests.server_process import RegistryProcess, start_registry

ClientFactory = Callable[..., Awaitable[TestClient]]


def make_config(data_dir: Path, **overrides: Any) -> Config:
    """A configuration for tests: defaults, this data dir, no environment."""
    return load_config(environ={}, overrides={"data_dir": str(data_dir), **overrides})


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def start_client(aiohttp_client: Any, data_dir: Path) -> ClientFactory:
    """Start (or restart) the registry app on a loopback socket over `data_dir`."""

    async def start(**overrides: Any) -> TestClient:
        return await aiohttp_client(create_app(make_config(data_dir, **overrides)))

    return start


@pytest.fixture
async def client(start_client: ClientFactory) -> TestClient:
    """A client of a fresh registry (pytest-aiohttp serves it on 127.0.0.1)."""
    return await start_client()


@pytest.fixture
def live_registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    """A real Trustyard process on a loopback port with its own data directory."""
    server = start_registry(tmp_path / "data")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """One real Trustyard process shared by the tests of a module."""
    server = start_registry(tmp_path_factory.mktemp("registry") / "data")
    try:
        yield server
    finally:
        server.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--soak=SECONDS`: run the storage torture test for that long instead of its CI length."""
    parser.addoption(
        "--soak",
        type=float,
        default=None,
        help="seconds of storm per backend for tests/storage/test_torture.py",
    )
