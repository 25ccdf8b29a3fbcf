"""What storage is told by whoever configures it: small settings objects, never the whole
configuration. `registry.config` builds them from the validated file, variables and flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: S3's smallest allowed part (every part but the last).
MIN_PART_SIZE = 5 * 1024 * 1024

#: What an S3 upload's part buffer may hold beyond one part: the batch that overfills it.
APPEND_SLACK = 1 << 20


@dataclass(frozen=True)
class S3Settings:
    """The `storage.s3` configuration, with defaults filled in (durations in seconds)."""

    bucket: str
    endpoint_url: str | None = None
    region: str = "us-east-1"
    prefix: str = ""
    addressing_style: str = "auto"
    redirect: bool = False
    redirect_expiry: float = 1200.0
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    profile: str | None = None
    server_side_encryption: str | None = None
    sse_kms_key_id: str | None = None
    max_pool_connections: int = 16
    part_size: int = 8 * 1024 * 1024
    upload_parallelism: int = 4
    upload_memory: int = 256 * 1024 * 1024
    upload_memory_wait: float = 30.0
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 3
    create_bucket: bool = True

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(f"storage.s3.part_size must be at least {MIN_PART_SIZE} bytes")
        if self.upload_memory < self.part_size + APPEND_SLACK:
            raise ValueError(
                "storage.s3.upload_memory must hold at least one part buffer "
                f"(part_size + {APPEND_SLACK} bytes)"
            )


@dataclass(frozen=True)
class BlobStoreSettings:
    """Which blob backend to open, and where: `storage.backend`, `data_dir`, `storage.fsync`,
    and `storage.s3` when the backend is S3."""

    backend: str
    data_dir: Path
    fsync: bool = True
    s3: S3Settings | None = None
