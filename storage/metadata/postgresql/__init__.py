"""The PostgreSQL implementation of the metadata interface: for registries served by several
processes or replicas, on a database the team already operates.

It runs the statements of `storage.metadata.sqlite`'s groups (rewritten by `dialect`) over an
asyncpg pool (`connection`): one set of statements, so the two backends cannot disagree on what a
write does. What differs is the connection, the transactions and the column types.
"""

from __future__ import annotations

import asyncpg

from storage.metadata.interface import MetadataDB
from storage.metadata.postgresql.connection import (
    MetadataUnreachable,
    PostgreSQLBase,
    redact,
    schema_version_at,
)
from storage.metadata.postgresql.coordination import PostgreSQLCoordination
from storage.metadata.postgresql.url import MetadataUrlInvalid, check_url
from storage.metadata.sqlite.blobs import SQLiteBlobs
from storage.metadata.sqlite.coordination import SQLiteCoordination
from storage.metadata.sqlite.decisions import SQLiteDecisions
from storage.metadata.sqlite.housekeeping import SQLiteHousekeeping
from storage.metadata.sqlite.library import SQLiteLibrary
from storage.metadata.sqlite.manifests import SQLiteManifests
from storage.metadata.sqlite.outbox import SQLiteOutbox
from storage.metadata.sqlite.proofs import SQLiteProofs
from storage.metadata.sqlite.proxy import SQLiteProxy
from storage.metadata.sqlite.scans import SQLiteScans

#: What this backend raises when its database cannot be used at all.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    MetadataUnreachable,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

#: URL schemes that select this backend.
SCHEMES = ("postgresql://", "postgres://")


class PostgreSQLMetadata(  # type: ignore[misc]
    PostgreSQLCoordination,
    PostgreSQLBase,
    SQLiteManifests,
    SQLiteBlobs,
    SQLiteDecisions,
    SQLiteOutbox,
    SQLiteLibrary,
    SQLiteScans,
    SQLiteProofs,
    SQLiteHousekeeping,
    SQLiteProxy,
    SQLiteCoordination,
    MetadataDB,
):
    """The metadata database in PostgreSQL, opened with `PostgreSQLMetadata.open(url)`."""


__all__ = [
    "DATABASE_ERRORS",
    "SCHEMES",
    "MetadataUnreachable",
    "MetadataUrlInvalid",
    "PostgreSQLMetadata",
    "check_url",
    "redact",
    "schema_version_at",
]
