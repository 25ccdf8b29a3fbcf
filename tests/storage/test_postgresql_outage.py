"""A registry on PostgreSQL whose database server goes away: requests are answered 503
UNAVAILABLE with the reason (never a 500 or a traceback), what was answered 201 before is still
there when the server is back, and the registry serves again without a restart."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry.app import create_app
from tests.conftest import make_config
from tests.oci import error_codes, push_image
from tests.postgres_server import PostgresServer, postgres_bin


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, which it may stop and start."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (bash .ci/install-postgres-deps.sh)")
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="trustyard-pg-outage-")))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


async def test_a_lost_database_is_503_and_the_registry_recovers(
    aiohttp_client: Any, tmp_path: Path, own_postgres: PostgresServer
) -> None:
    url = own_postgres.create_database()
    client = await aiohttp_client(create_app(make_config(tmp_path / "data", metadata=url)))
    digest, _ = await push_image(client, "team/app", "v1")

    await asyncio.to_thread(own_postgres.stop)
    for path in ("/v2/team/app/manifests/v1", "/v2/team/app/tags/list", "/v2/_catalog"):
        response = await client.get(path)
        assert response.status == 503, (path, await response.text())
        body = await response.json()
        assert error_codes(body) == ["UNAVAILABLE"]
        assert body["errors"][0]["detail"]["backend"] == "postgresql"
        assert body["errors"][0]["detail"]["reason"].startswith("metadata database: ")

    await asyncio.to_thread(own_postgres.restart)
    deadline = time.monotonic() + 60
    while True:
        response = await client.get("/v2/team/app/manifests/v1")
        if response.status == 200 or time.monotonic() > deadline:
            break
        assert response.status == 503
        await asyncio.sleep(0.1)  # polling for the pool's reconnection, bounded by the deadline
    assert response.status == 200
    assert response.headers["Docker-Content-Digest"] == digest
