"""A PostgreSQL metadata URL reaches two drivers (asyncpg for reads and locks, libpq through
psycopg for the writes): a parameter only one of them reads is refused when the configuration is
loaded, in one line naming the parameter and what to write instead, never at the first write.

Without the check, `?database=` (asyncpg's spelling) starts a registry whose writer connects at
the first push and is refused by libpq (`invalid URI query parameter`); `?ssl=require` is sent by
asyncpg to the server as a setting and refused with a message about the server's `ssl`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from storage.layout import DataLayout
from storage.metadata import MetadataUnreachable, open_metadata
from storage.metadata.postgresql import redact, schema_version_at
from tests.operations.cli import ROOT, one_line, trustyard


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


@pytest.mark.parametrize(
    ("parameter", "advice"),
    [
        (
            "ssl=require",
            "write sslmode (sslmode=require, or sslmode=verify-full to check the server's name)",
        ),
        ("database=other", "write dbname, or the database name as the URL's path"),
    ],
)
def test_serve_refuses_an_asyncpg_spelling_from_the_environment(
    tmp_path: Path, postgres_url: str, parameter: str, advice: str
) -> None:
    url = with_query(postgres_url, parameter)
    result = trustyard(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "data"),
        env={"TRUSTYARD_METADATA": url},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "trustyard: invalid configuration:",
        f"  TRUSTYARD_METADATA: metadata: parameter '{parameter}' is asyncpg's spelling, which "
        f"libpq (the driver of the writes) refuses: {advice}",
    ]


def test_serve_refuses_a_parameter_neither_reads_alike_from_the_file(
    tmp_path: Path, postgres_url: str
) -> None:
    config = tmp_path / "trustyard.yaml"
    config.write_text(f"# replicas\nmetadata: {with_query(postgres_url, 'connect_timeout=5')}\n")
    # The file's setting, not the test's database from the environment (which would win).
    without = {k: v for k, v in os.environ.items() if k != "TRUSTYARD_METADATA"}
    result = subprocess.run(
        [
            *[sys.executable, "-m", "registry", "serve", "--listen", "127.0.0.1:0"],
            *["--data-dir", str(tmp_path), "--config", str(config)],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**without, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{config}:2: metadata: parameter 'connect_timeout=5' is not one both PostgreSQL " in (
        result.stderr
    )
    assert "these are: application_name, dbname," in result.stderr


def test_migrate_to_refuses_an_asyncpg_spelling_and_copies_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    source = tmp_path / "metadata.sqlite"
    source.write_bytes(b"")  # never opened: the URL is refused first
    url = with_query(postgres_url, "ssl=require")
    result = trustyard("migrate", "--from", str(source), "--to", url)
    assert result.returncode == 2, result.stderr
    line = one_line(result)
    assert line.startswith(f"trustyard: migrate --to {redact(url)}: parameter 'ssl=require' ")
    assert "write sslmode (sslmode=require" in line
    assert asyncio.run(schema_version_at(postgres_url)) is None  # nothing written there


async def test_opening_refuses_it_before_any_connection(tmp_path: Path, postgres_url: str) -> None:
    """Below the configuration (a caller that builds the URL itself): the same refusal, as the
    one-line error the command line prints."""
    url = with_query(postgres_url, "ssl=require")
    with pytest.raises(MetadataUnreachable, match=r"parameter 'ssl=require' is asyncpg's"):
        await open_metadata(DataLayout(tmp_path).database, url)


async def test_parameters_both_drivers_read_reach_both(tmp_path: Path, postgres_url: str) -> None:
    """What the check lets through works on both drivers: the reads' pool and the writes'
    connection both carry the URL's `application_name` (and `sslmode=disable` on loopback)."""
    url = with_query(postgres_url, "sslmode=disable&application_name=trustyard-url-test")
    db = await open_metadata(DataLayout(tmp_path).database, url)
    try:
        await db.start_upload("0" * 32, "team/app")  # a write: the writer connects
        assert await db.upload_repository("0" * 32) == "team/app"  # a read, on the pool
        watcher = await asyncpg.connect(postgres_url)
        try:
            names = await watcher.fetch(
                "SELECT backend_type, application_name FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await watcher.close()
        assert {row["application_name"] for row in names} == {"trustyard-url-test"}
        assert len(names) >= 2  # the pool's connection and the writer's
    finally:
        await db.close()
