"""Versioned schema upgrades of a PostgreSQL metadata database (`storage.layout.UPGRADES`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from storage.layout import SCHEMA_VERSION, UPGRADES
from storage.metadata.postgresql.connection import WRITE_LOCK, PGConnection, connect_pool, redact
from storage.metadata.sqlite.upgrade import UpgradeRefused


async def upgrade_postgresql(
    url: str,
    upgrades: Mapping[int, Sequence[str]] = UPGRADES,
    target: int = SCHEMA_VERSION,
) -> tuple[int | None, int | None]:
    """Apply the upgrades from the database's recorded version up to `target`, each version in
    one transaction holding the write lock (so serving replicas wait, never see half of one);
    (version before, version after). A database without a schema is left to `open`."""
    pool = await connect_pool(url)
    try:
        async with pool.acquire() as connection:
            if not await connection.fetchval("SELECT to_regclass('schema_version') IS NOT NULL"):
                return None, None
            before = current = int(await connection.fetchval("SELECT version FROM schema_version"))
            if current > target:
                raise UpgradeRefused(
                    f"{redact(url)} has schema version {current}, newer than this "
                    f"Trustyard's {target}"
                )
            for version in range(current + 1, target + 1):
                async with connection.transaction():
                    await connection.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                    db = PGConnection(connection)
                    for statement in upgrades[version]:
                        await db.execute(statement)
                    await db.execute("UPDATE schema_version SET version = ?", (version,))
                current = version
            return before, current
    finally:
        await pool.close()
