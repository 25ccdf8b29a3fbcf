"""Choose and open the blob store the settings name (`storage.backend`)."""

from __future__ import annotations

from storage.blobstore import BlobStore
from storage.filesystem import FilesystemBlobStore
from storage.layout import DataLayout
from storage.settings import BlobStoreSettings


def open_blob_store(settings: BlobStoreSettings) -> BlobStore:
    """The configured blob backend; the only place that knows which backends exist."""
    if settings.backend == "filesystem":
        return FilesystemBlobStore(DataLayout(settings.data_dir), fsync=settings.fsync)
    if settings.backend == "s3" and settings.s3 is not None:
        # Imported here so that boto3 loads only where S3 is configured.
        from storage.s3 import S3BlobStore

        return S3BlobStore(settings.s3, DataLayout(settings.data_dir))
    raise ValueError(f"unknown storage backend {settings.backend!r}")
