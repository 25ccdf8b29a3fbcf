"""The SQLite implementation of the metadata interface: the embedded default.

One module per group of `storage.metadata.interface`, each a mixin over `SQLiteBase` (the two
connections and the write transaction); `SQLiteMetadata` is their union. Only this package (and
`storage.gc_rules`, whose rules it runs, and `storage.backup`, which copies the file) speaks SQL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from storage.metadata.interface import MetadataDB
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

#: What the backend raises when its database cannot be used at all (a damaged or foreign file),
#: for the command line to explain instead of a traceback.
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)


class SQLiteMetadata(
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
    """The metadata database in one SQLite file (WAL mode), opened with `SQLiteMetadata.open`."""


def schema_version_of(database: Path) -> int | None:
    """The schema version recorded in an existing SQLite database file (None: none recorded),
    read without writing; `sqlite3.DatabaseError` when the file is not a usable database."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if "schema_version" not in tables:
            return None
        row = connection.execute("SELECT version FROM schema_version").fetchone()
        return None if row is None else int(row[0])
    finally:
        connection.close()
