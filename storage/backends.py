"""Choose and open the blob store the configuration names (`storage.backend`)."""

from __future__ import annotations

from registry.config import Config
from storage.blobstore import BlobStore
from storage.filesystem import FilesystemBlobStore
from storage.layout import DataLayout


def open_blob_store(config: Config) -> BlobStore:
    """The configured blob backend; the only place that knows which backends exist."""
    backend = config.raw["storage"]["backend"]
    if backend == "filesystem":
        return FilesystemBlobStore(DataLayout(config.data_dir), fsync=config.fsync)
    if backend == "s3":
        # Imported here so that boto3 loads only where S3 is configured.
        from storage.s3 import S3BlobStore, S3Settings

        return S3BlobStore(S3Settings.from_config(config), DataLayout(config.data_dir))
    raise ValueError(f"unknown storage backend {backend!r}")
