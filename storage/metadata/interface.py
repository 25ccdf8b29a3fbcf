"""The metadata interface: the one type every caller outside `storage/` depends on.

`MetadataDB` is the union of the groups, each defined (with the values it stores) in the module
of `storage/metadata/` named for what it holds::

    ManifestsAndTags   (manifests.py)     repositories, manifests, manifest_references, tags
    BlobsAndUploads    (blobs.py)         blobs, repository_blobs, uploads
    Decisions          (decisions.py)     policy_decisions, evidence_versions
    OutboxRecords      (outbox.py)        event_outbox
    LibraryRecords     (library.py)       library_tag_history, image_lineage, images_without_base
    ScanRecords        (scans.py)         scan_reports, scan_findings, scan_signatures
    SignatureProofs    (proofs.py)        signature_proofs
    Housekeeping       (housekeeping.py)  gc_runs, and garbage collection's deletions
    Coordination       (coordination.py)  shared_generations, and locks across processes

Rules every backend keeps:

* Every method is atomic: a write is one transaction of the backend (an `async with` block
  around its statements), a read sees one consistent state.
* Rows another concern adds to a write are passed in as values (`OutboxRow`s; library changes,
  `FollowLibraryTag` and `EndLibraryTag`; an `Announce` that turns a `LibraryMove` into outbox
  rows) and written in that write's transaction: an event exists exactly when its change does.
* Values in, values out: arguments and results are plain Python values and the dataclasses of
  the group modules; nothing of a driver (connections, cursors, rows, SQL) crosses the interface.
* A full disk is `storage.blobstore.StorageFull`; a database that cannot be used at all raises
  one of `storage.metadata.DATABASE_ERRORS`.

The SQLite implementation is `storage.metadata.sqlite.SQLiteMetadata`; `open_metadata` opens the
configured backend.
"""

from __future__ import annotations

from abc import abstractmethod

from storage.metadata.blobs import BlobsAndUploads
from storage.metadata.coordination import Coordination
from storage.metadata.decisions import Decisions
from storage.metadata.housekeeping import Housekeeping
from storage.metadata.library import LibraryRecords
from storage.metadata.manifests import ManifestsAndTags
from storage.metadata.outbox import OutboxRecords
from storage.metadata.proofs import SignatureProofs
from storage.metadata.proxy import ProxyRecords
from storage.metadata.scans import ScanRecords


class MetadataDB(
    ManifestsAndTags,
    BlobsAndUploads,
    Decisions,
    OutboxRecords,
    LibraryRecords,
    ScanRecords,
    SignatureProofs,
    Housekeeping,
    ProxyRecords,
    Coordination,
):
    """Trustyard's metadata database, whichever engine keeps it (see the module docstring)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the backend's connections (after the last call)."""
