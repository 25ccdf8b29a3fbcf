"""Committing a verified upload so that no concurrent garbage collection can lose it.

The order is the uploader's half of the blob deletion protocol (docs/architecture.md, "Deleting
blobs"): the bytes are placed at their address while the upload keeps its own copy, the database
records the blob (which restarts its grace period), and only then is the address checked once
more and the upload dropped. Any collection that moved the blob to its trash after that record
decides inside a later transaction, sees the record and puts the blob back; any collection that
moved it before is seen missing here and the blob is placed again from the upload's copy.
"""

from __future__ import annotations

from storage.blobstore import BlobStore
from storage.metadata import MetadataDB
from storage.oci.digests import Digest


async def commit_blob(
    store: BlobStore, db: MetadataDB, upload_id: str, digest: Digest, size: int, repository: str
) -> None:
    """Make a verified upload blob `digest` of `repository`; the upload is gone after."""
    await store.place(upload_id, digest)
    await db.link_blob(repository, str(digest), size)
    if await store.size(digest) != size:
        # Moved to a collection's trash between placement and record: place it again.
        await store.place(upload_id, digest)
    await store.abort(upload_id)
