"""`trustyard library import` moves a registry tag and its library tag under the tag's lock, as a
push does, and confirms the lock just before each commit: one whose PostgreSQL lock connection is
ended while it holds the lock does not move the library tag (another replica could have taken the
tag meanwhile), says so in one line, and the import run again moves it.

The import is paused inside its tag lock by holding the `tags` table against writes (SHARE
mode: its tagged manifest write waits behind it, what it reads and creates at start-up does
not), while the test ends the lock's backend with `pg_terminate_backend`. (SQLite's record locks
cannot be lost while their process lives.)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import asyncpg

from storage.metadata.coordination import tag_key
from tests.library.images import Image, layer_tar, write_oci_layout
from tests.replicas.locks import backend_holding

#: Only turns a hang into a failure.
PATIENCE = 60.0

POLICY = """\
version: 1
library:
  images:
    - name: python
      tags: ["3.12-slim"]
rules: []
"""

BASE = Image([layer_tar("lost-lock-1"), layer_tar("lost-lock-2")])


async def library_import(
    data_dir: Path, url: str, policy: Path, layout: Path
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "registry", "library", "import", str(layout)],
        *["--as", "python:3.12-slim", "--policy", str(policy), "--data-dir", str(data_dir)],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TRUSTYARD_METADATA": url},
    )


async def library_history(url: str) -> list[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT digest FROM library_tag_history WHERE name = 'python' ORDER BY since"
        )
    finally:
        await connection.close()
    return [row["digest"] for row in rows]


async def test_an_import_whose_tag_lock_was_dropped_does_not_move_the_library(
    registry_postgres_url: str, tmp_path: Path
) -> None:
    metadata_url = registry_postgres_url
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    write_oci_layout(tmp_path / "layout", [BASE])
    data = tmp_path / "data"
    data.mkdir()
    key = tag_key("library/python", "3.12-slim")
    hold = await asyncpg.connect(metadata_url)
    try:
        transaction = hold.transaction()
        await transaction.start()
        await hold.execute("LOCK TABLE tags IN SHARE MODE")
        importing = await library_import(data, metadata_url, policy, tmp_path / "layout")
        deadline = time.monotonic() + PATIENCE
        while (backend := await backend_holding(metadata_url, key)) is None:
            assert time.monotonic() < deadline, "the import never took the tag's lock"
            assert importing.returncode is None, await importing.communicate()
            await asyncio.sleep(0.01)
        assert await hold.fetchval("SELECT pg_terminate_backend($1)", backend)
        while await hold.fetchval("SELECT 1 FROM pg_stat_activity WHERE pid = $1", backend):
            assert time.monotonic() < deadline, "the lock's backend did not end"
            await asyncio.sleep(0.01)
        assert await backend_holding(metadata_url, key) is None
        await transaction.rollback()
    finally:
        await hold.close()

    out, err = await importing.communicate()
    assert importing.returncode == 1, (out, err)
    assert "Traceback" not in err.decode()
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith(
        "trustyard: library import: library/python:3.12-slim: tag lock lost: its connection to "
        "PostgreSQL "
    ), err
    assert last.endswith(
        "(the connection to the metadata database went): the library tag was not moved; run the "
        "import again"
    ), err
    assert await library_history(metadata_url) == []

    # Run again: the lock is taken on a fresh connection, the library tag moves.
    again = await library_import(data, metadata_url, policy, tmp_path / "layout")
    out, err = await again.communicate()
    assert again.returncode == 0, err
    assert await library_history(metadata_url) == [BASE.digest]
