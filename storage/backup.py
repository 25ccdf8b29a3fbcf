"""Back up a data directory and restore it: the database first, then the blobs it names.

A backup is a folder laid out like a filesystem data directory (`DataLayout`)::

    <backup>/
    ├── trustyard-backup.json   what was copied: time, database, blob count and bytes
    ├── metadata.sqlite         a consistent snapshot (SQLite's online backup API)
    ├── auth/                   the users file and token signing key, when present
    └── blobs/<alg>/<hex[0:2]>/<hex>

The snapshot is taken first, while the registry may keep serving; then every blob the snapshot
names is copied from the blob store (either backend) and its digest checked while it is read.
A blob pushed after the snapshot is not needed by it; a blob the snapshot names cannot be
collected meanwhile unless GC runs during the backup (do not run both at once). Restore checks
the whole backup (database integrity, every named blob present and matching its digest) before
it writes anything, then puts the blobs into the configured store and the database last, so a
data directory holding a database always holds the blobs it names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storage.blobstore import BlobStore
from storage.layout import DataLayout
from storage.oci.digests import parse_digest

MANIFEST_NAME = "trustyard-backup.json"
AUTH_DIR = "auth"
_CHUNK = 1 << 20

Progress = Callable[[int, int], None]


class BackupError(Exception):
    """The backup or restore cannot go on; the message says why, in one line."""


@dataclass(frozen=True)
class BackupSummary:
    """What a backup or restore copied."""

    blobs: int
    bytes: int
    database_bytes: int


def snapshot_database(source: Path, target: Path) -> int:
    """Copy the SQLite database at `source` to `target` consistently (online backup API, safe
    while the registry writes); the snapshot's size."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        # One file, no -wal beside it: the copy is complete on its own.
        dst.execute("PRAGMA journal_mode = DELETE")
    finally:
        dst.close()
        src.close()
    return target.stat().st_size


def named_blobs(database: Path) -> list[tuple[str, int]]:
    """Every blob (digest, size) the database at `database` names."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return [(str(d), int(s)) for d, s in db.execute("SELECT digest, size FROM blobs")]
    finally:
        db.close()


async def backup(
    data_dir: Path, store: BlobStore, target: Path, progress: Progress | None = None
) -> BackupSummary:
    """Back up `data_dir` (with its blob `store`) into the new folder `target`."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"backup folder {target} exists and is not empty: give a new folder")
    source = DataLayout(data_dir)
    out = DataLayout(target)
    target.mkdir(parents=True, exist_ok=True)
    database_bytes = snapshot_database(source.database, out.database)
    blobs = named_blobs(out.database)
    total = sum(size for _, size in blobs)
    copied = 0
    for index, (name, size) in enumerate(blobs):
        digest = parse_digest(name)
        path = out.blob(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.new(digest.algorithm)
        with path.open("wb") as file:
            async for chunk in store.read(digest):
                hasher.update(chunk)
                file.write(chunk)
        if f"{digest.algorithm}:{hasher.hexdigest()}" != name:
            raise BackupError(f"blob {name} in the store does not match its digest: run fsck")
        copied += size
        if progress is not None:
            progress(index + 1, len(blobs))
    if (data_dir / AUTH_DIR).is_dir():
        shutil.copytree(data_dir / AUTH_DIR, target / AUTH_DIR)
    summary = BackupSummary(len(blobs), copied, database_bytes)
    (target / MANIFEST_NAME).write_text(
        json.dumps(
            {
                "format": 1,
                "created_at": time.time(),
                "blobs": summary.blobs,
                "blob_bytes": summary.bytes,
                "total_bytes": total,
                "database_bytes": database_bytes,
            },
            indent=2,
        )
        + "\n"
    )
    return summary


def check_restore_target(data_dir: Path) -> None:
    """Refuse to restore over anything: the data directory must be new or empty."""
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError(
            f"data directory {data_dir} exists and is not empty: restore into a new one"
        )


def verify_backup(folder: Path, progress: Progress | None = None) -> list[tuple[str, int]]:
    """Check a backup whole before anything is restored: its database is intact and every blob
    it names is there with the right digest. The blobs (digest, size)."""
    if not (folder / MANIFEST_NAME).is_file():
        raise BackupError(f"{folder} is not a Trustyard backup (no {MANIFEST_NAME})")
    layout = DataLayout(folder)
    try:
        db = sqlite3.connect(f"file:{layout.database}?mode=ro", uri=True)
        try:
            result = db.execute("PRAGMA integrity_check").fetchone()
        finally:
            db.close()
        blobs = named_blobs(layout.database)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{layout.database}: not a usable database: {exc}") from None
    if result is None or result[0] != "ok":
        raise BackupError(f"{layout.database}: integrity check failed: {result}")
    for index, (name, size) in enumerate(blobs):
        digest = parse_digest(name)
        path = layout.blob(digest)
        if not path.is_file():
            raise BackupError(f"blob {name} named by the database is missing from {folder}")
        hasher = hashlib.new(digest.algorithm)
        with path.open("rb") as file:
            while chunk := file.read(_CHUNK):
                hasher.update(chunk)
        if f"{digest.algorithm}:{hasher.hexdigest()}" != name or path.stat().st_size != size:
            raise BackupError(f"blob {name} in {folder} is damaged (digest or size differs)")
        if progress is not None:
            progress(index + 1, len(blobs))
    return blobs


async def restore(
    folder: Path,
    data_dir: Path,
    store: BlobStore,
    progress: Progress | None = None,
    *,
    verified: list[tuple[str, int]] | None = None,
) -> BackupSummary:
    """Restore the backup `folder` into `data_dir` and `store`. Check the target first with
    `check_restore_target` and the backup with `verify_backup` (its result is `verified`),
    before the store is opened: a refused restore leaves nothing behind."""
    target = DataLayout(data_dir).database
    if target.exists():
        raise BackupError(f"{target} exists: restore into a new data directory")
    blobs = verify_backup(folder) if verified is None else verified
    data_dir.mkdir(parents=True, exist_ok=True)
    source = DataLayout(folder)
    copied = 0
    for index, (name, size) in enumerate(blobs):
        digest = parse_digest(name)
        if await store.size(digest) is None:
            upload_id = uuid.uuid4().hex
            await store.start_upload(upload_id)
            try:
                with source.blob(digest).open("rb") as file:
                    while chunk := file.read(_CHUNK):
                        await store.append(upload_id, chunk)
                await store.commit(upload_id, digest)
            except BaseException:
                await store.abort(upload_id)
                raise
        copied += size
        if progress is not None:
            progress(index + 1, len(blobs))
    if (folder / AUTH_DIR).is_dir():
        shutil.copytree(folder / AUTH_DIR, data_dir / AUTH_DIR)
    # The database last, by rename: it appears only once every blob it names is in place.
    partial = target.with_name(target.name + ".restoring")
    shutil.copyfile(source.database, partial)
    with partial.open("rb+") as file:
        os.fsync(file.fileno())
    os.replace(partial, target)
    return BackupSummary(len(blobs), copied, target.stat().st_size)
