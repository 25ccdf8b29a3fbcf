"""Two real `python -m registry serve` processes on one metadata database, for the replica tests.

On SQLite they share one data directory (the processes of one machine); on PostgreSQL they share
the database and the data directory's blob store (replicas on several machines would share an S3
bucket instead: the HA tests run that form). Every test here runs on both backends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.server_process import START_TIMEOUT, RegistryProcess, start_registry
from tests.storage.conftest import s3_storage


@dataclass
class Replicas:
    """The running replicas and what they share."""

    servers: list[RegistryProcess]
    data_dir: Path
    metadata_url: str | None  # None: SQLite in `data_dir`

    @property
    def a(self) -> RegistryProcess:
        return self.servers[0]

    @property
    def b(self) -> RegistryProcess:
        return self.servers[1]

    def env(self) -> dict[str, str]:
        """The environment a command on the shared database runs with."""
        return {"TRUSTYARD_METADATA": self.metadata_url} if self.metadata_url else {}


StartReplicas = Callable[..., Replicas]


@pytest.fixture(params=["sqlite", "postgresql"])
def metadata_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Each backend in turn: None (one SQLite file) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        monkeypatch.delenv("TRUSTYARD_METADATA", raising=False)
        return None
    url: str = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("TRUSTYARD_METADATA", url)
    return url


@pytest.fixture
def start_replicas(tmp_path: Path, metadata_url: str | None) -> Iterator[StartReplicas]:
    """Start `count` replicas (default two) with the same arguments; stopped at the end."""
    started: list[RegistryProcess] = []

    def start(*args: str, count: int = 2) -> Replicas:
        data = tmp_path / "data"
        servers = []
        for _ in range(count):
            server = start_registry(data, extra_args=list(args), timeout=START_TIMEOUT)
            started.append(server)
            servers.append(server)
        return Replicas(servers, data, metadata_url)

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(params=["filesystem", "s3"])
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """The replicas' blob store, for tests run on both: the shared data directory, or one S3
    prefix in SeaweedFS (the arguments to start them with)."""
    if request.param == "filesystem":
        return []
    config = tmp_path / "trustyard.yaml"
    config.write_text(yaml.safe_dump({"storage": s3_storage(request.getfixturevalue("seaweed"))}))
    return ["--config", str(config)]
