"""Space held back on the data directory's disk so that garbage collection can run when it is full.

Deleting a row in SQLite still writes: the WAL (or a rollback journal) must hold the changed
pages before the database file does. On a disk with no byte free, even `DELETE` fails with
"database or disk is full", so the only way to free space would be to grow the disk. The server
therefore keeps a small file of zeros, `<data-dir>/reserve`, that uploads can never use; the
collector deletes it before it opens the database or writes anything, and makes it again once it
is done (when there is room).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil

from storage.layout import DataLayout

log = logging.getLogger(__name__)

#: The most space held back; a small disk holds back 1/32 of itself.
MAX_RESERVE = 4 * 1024 * 1024


def reserve_size(layout: DataLayout) -> int:
    """How many bytes the reserve holds on this data directory's disk."""
    total = shutil.disk_usage(layout.root).total
    return max(64 * 1024, min(MAX_RESERVE, total // 32))


def release(layout: DataLayout) -> int:
    """Delete the reserve (first thing a collection does); the bytes it freed."""
    try:
        size = layout.reserve.stat().st_size
        layout.reserve.unlink()
    except FileNotFoundError:
        return 0
    log.info("released the %d-byte reserve on %s", size, layout.root)
    return size


def ensure(layout: DataLayout) -> bool:
    """Make the reserve if it is missing and the disk has room for it and as much again;
    whether it is in place. A full disk leaves it missing (and the server running)."""
    # With blobs on S3 and metadata on PostgreSQL nothing else makes the data directory.
    layout.root.mkdir(parents=True, exist_ok=True)
    size = reserve_size(layout)
    with contextlib.suppress(FileNotFoundError):
        if layout.reserve.stat().st_size >= size:
            return True
    if shutil.disk_usage(layout.root).free < 2 * size:
        log.warning("no room for the %d-byte reserve on %s", size, layout.root)
        return False
    partial = layout.reserve.with_name("reserve.partial")
    try:
        with partial.open("wb") as handle:
            # Real blocks (not a sparse file): the point is that they are taken. fallocate
            # takes them without writing; where it is not supported, zeros are written.
            try:
                os.posix_fallocate(handle.fileno(), 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                chunk = b"\0" * (64 * 1024)
                for _ in range(0, size, len(chunk)):
                    handle.write(chunk)
        os.replace(partial, layout.reserve)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        log.warning("could not make the reserve on %s: %s", layout.root, exc)
        return False
    return True
