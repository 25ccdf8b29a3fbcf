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
    raise ValueError(f"unknown storage backend {backend!r}")
