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
    └── sqlite/          the SQLite implementation, one module per group (all the SQL)

The schema and where each row lives are described in `storage.layout`. `open_metadata` opens the
backend; callers hold a `MetadataDB` and call its methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from storage.metadata.decisions import DecisionRecord
from storage.metadata.housekeeping import GCRun, Simulation
from storage.metadata.interface import MetadataDB
from storage.metadata.library import (
    Announce,
    ConsumerRow,
    EndLibraryTag,
    FollowLibraryTag,
    LibraryChange,
    LibraryMove,
    LineageRow,
    TagHistoryEntry,
)
from storage.metadata.manifests import (
    ManifestRecord,
    MissingReferences,
    Reference,
    Referrer,
    RepositorySummary,
    TagRow,
)
from storage.metadata.outbox import Backlog, Delivery, OutboxRow
from storage.metadata.proofs import ProofRow
from storage.metadata.sqlite import DATABASE_ERRORS, SQLiteMetadata

#: Rows an observer adds to a write, written in its transaction (the events outbox).
OutboxRows = Sequence[OutboxRow]
#: The earlier name of `OutboxRows` (when they were SQL statements), for callers written with it.
Statements = OutboxRows


async def open_metadata(path: Path) -> MetadataDB:
    """Open (creating if needed) the metadata database at `path`."""
    return await SQLiteMetadata.open(path)


__all__ = [
    "DATABASE_ERRORS",
    "Announce",
    "Backlog",
    "ConsumerRow",
    "DecisionRecord",
    "Delivery",
    "EndLibraryTag",
    "FollowLibraryTag",
    "GCRun",
    "LibraryChange",
    "LibraryMove",
    "LineageRow",
    "ManifestRecord",
    "MetadataDB",
    "MissingReferences",
    "OutboxRow",
    "OutboxRows",
    "ProofRow",
    "Reference",
    "Referrer",
    "RepositorySummary",
    "SQLiteMetadata",
    "Simulation",
    "Statements",
    "TagHistoryEntry",
    "TagRow",
    "open_metadata",
]
