"""The metadata database: every row Trustyard keeps besides blob bytes, behind one interface.

    storage/metadata/
    ├── interface.py     MetadataDB: the interface every caller outside storage/ depends on
    ├── manifests.py     manifests and tags           (values + the group's abstract methods)
    ├── blobs.py         blob records and uploads
    ├── decisions.py     the decision log and evidence versions
    ├── outbox.py        the events outbox
    ├── library.py       library tag history, lineage, images waiting for a base
    ├── scans.py         scan reports
    ├── scan_store.py    ScanStore and gather_scans: what callers use for scans, over MetadataDB
    ├── proofs.py        signature proofs
    ├── housekeeping.py  garbage collection's marks and deletions, its runs, the probe
    ├── coordination.py  locks across processes and replicas, shared generations
    ├── generations.py   GenerationWatch: noticing what other processes changed
    ├── sqlite/          the SQLite implementation, one module per group (all the SQL)
    └── postgresql/      the PostgreSQL implementation: the same statements, rewritten

The schema and where each row lives are described in `storage.layout`. `open_metadata` opens the
backend; callers hold a `MetadataDB` and call its methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from storage.metadata.coordination import GC_KEY, tag_key, upload_key
from storage.metadata.decisions import DecisionRecord
from storage.metadata.generations import GenerationWatch
from storage.metadata.housekeeping import GCRun, Simulation
from storage.metadata.interface import MetadataDB
from storage.metadata.library import (
    Announce,
    ConsumerRow,
    EndLibraryTag,
    FollowLibraryTag,
    LibraryChange,
    LibraryHistory,
    LibraryMove,
    LibraryMoved,
    LineageRow,
    RecordLineage,
    TagHistoryEntry,
)
from storage.metadata.manifests import (
    ManifestRecord,
    MissingReferences,
    Reference,
    Referrer,
    RepositoryChanged,
    RepositorySummary,
    TagMoved,
    TagPremise,
    TagRow,
)
from storage.metadata.outbox import Backlog, Delivery, OutboxRow
from storage.metadata.postgresql import DATABASE_ERRORS as _POSTGRESQL_ERRORS
from storage.metadata.postgresql import SCHEMES as POSTGRESQL_SCHEMES
from storage.metadata.postgresql import MetadataUnreachable, PostgreSQLMetadata
from storage.metadata.proofs import ProofRow
from storage.metadata.sqlite import DATABASE_ERRORS as _SQLITE_ERRORS
from storage.metadata.sqlite import SQLiteMetadata

#: What a backend raises when its database cannot be used at all (a damaged or foreign SQLite
#: file, a PostgreSQL server that is down or refuses us), for the command line to explain.
DATABASE_ERRORS: tuple[type[Exception], ...] = (*_SQLITE_ERRORS, *_POSTGRESQL_ERRORS)

#: Rows an observer adds to a write, written in its transaction (the events outbox).
OutboxRows = Sequence[OutboxRow]


def is_postgresql(url: str | None) -> bool:
    """Whether the `metadata` setting names a PostgreSQL database (else: SQLite in the data
    directory)."""
    return url is not None and url.startswith(POSTGRESQL_SCHEMES)


async def open_metadata(path: Path, url: str | None = None) -> MetadataDB:
    """Open (creating if needed) the metadata database: PostgreSQL at `url` when it is a
    `postgresql://` URL, else the SQLite file at `path`."""
    if url is not None and is_postgresql(url):
        return await PostgreSQLMetadata.open(url)
    return await SQLiteMetadata.open(path)


__all__ = [
    "DATABASE_ERRORS",
    "GC_KEY",
    "POSTGRESQL_SCHEMES",
    "Announce",
    "Backlog",
    "ConsumerRow",
    "DecisionRecord",
    "Delivery",
    "EndLibraryTag",
    "FollowLibraryTag",
    "GCRun",
    "GenerationWatch",
    "LibraryChange",
    "LibraryHistory",
    "LibraryMove",
    "LibraryMoved",
    "LineageRow",
    "ManifestRecord",
    "MetadataDB",
    "MetadataUnreachable",
    "MissingReferences",
    "OutboxRow",
    "OutboxRows",
    "PostgreSQLMetadata",
    "ProofRow",
    "RecordLineage",
    "Reference",
    "Referrer",
    "RepositoryChanged",
    "RepositorySummary",
    "SQLiteMetadata",
    "Simulation",
    "TagHistoryEntry",
    "TagMoved",
    "TagPremise",
    "TagRow",
    "is_postgresql",
    "open_metadata",
    "tag_key",
    "upload_key",
]
