"""A local file one writer appends to while readers follow it at their own pace.

A proxied blob being fetched is streamed to clients that join late from such a file: on the
filesystem backend it is the upload's own file, on the S3 backend (whose multipart parts cannot be
read back before the upload completes) an unnamed file in the data directory's `uploads/` that
exists only while it is open (`O_TMPFILE`: nothing is left behind by a crash). Memory stays
bounded however far behind a reader is: what it has not read yet is in the page cache or on disk.

The writer appends from a worker thread (one `writev` per batch, no joined copy); a reader takes
its own descriptor (`reader`, a `dup`) and reads at offsets (`pread`), so no file position is
shared. The file is opened and closed on the event loop's thread only, after its last write:
a descriptor number is never reused under a reader or a late write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from storage.errors import StorageFull

#: errno values that mean the disk or the user's quota is full.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Buffers one `writev` is given at most (Linux's IOV_MAX).
IOV_MAX = 1024


class GrowingFile:
    """An open file appended to by one writer and read at offsets by any number of readers."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def append_to(cls, path: Path) -> GrowingFile:
        """Open an existing file (an upload's) to append to and follow."""
        return cls(os.open(path, os.O_RDWR | os.O_APPEND))

    @classmethod
    def unnamed(cls, directory: Path) -> GrowingFile:
        """A new empty file in `directory` without a name: it is gone once the writer and every
        reader closed it, and after a crash."""
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory, buffering=0) as handle:  # O_TMPFILE
            return cls(os.dup(handle.fileno()))

    def append(self, chunks: list[bytes]) -> None:
        """Append `chunks` in order (a short write goes on from where it stopped); a full disk
        is StorageFull. Blocking: call it from a worker thread."""
        pending = [memoryview(chunk) for chunk in chunks if chunk]
        first = 0
        try:
            while first < len(pending):
                written = os.writev(self.fd, pending[first : first + IOV_MAX])
                while written and first < len(pending):
                    if written >= len(pending[first]):
                        written -= len(pending[first])
                        first += 1
                    else:
                        pending[first] = pending[first][written:]
                        written = 0
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise StorageFull("disk") from exc
            raise

    def reader(self) -> int:
        """A descriptor of its own for a reader (`os.pread` on it; the reader closes it)."""
        return os.dup(self.fd)

    def close(self) -> None:
        """Close the writer's descriptor (readers keep theirs)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
