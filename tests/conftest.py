"""Fixtures shared by every test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_process import RegistryProcess, start_registry


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
