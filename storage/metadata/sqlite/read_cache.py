"""Manifests just read, answered again without the database until anything is committed.

A pull asks for the same tag thousands of times a second, and each read was a round trip to
the reader connection's thread: the query, two thread switches and a turn of the event loop,
the largest part of a manifest GET after the socket itself. So a manifest found by tag or by
digest is remembered here, under SQLite's `data_version` as it was just before the read, and
served from memory for as long as `data_version` has not moved.

`PRAGMA data_version` (read on a private connection that never writes) changes whenever a
transaction is committed to the file by any other connection, this process's writer, another
`serve --workers` worker, `trustyard gc` or any other program: it is the signal SQLite itself
uses to know its page cache went stale, so a cached manifest can never outlive a commit. It is
read before every answer from the cache, so a request that arrives after a push, a tag move or
a delete was committed (the client had its 201 or 202) is answered from the database as it is
then, in every process. Reading it costs a look at the write-ahead log's shared index (no
disk), on the event loop: microseconds, without a thread switch. When it cannot be read (any
SQLite error), nothing is answered from memory.

Any commit clears everything (pushes elsewhere, a scan result, the decision log's flush): the
cache is only worth having while reads far outnumber writes, as they do on a busy pull path.
Only manifests found are kept (a flood of unknown tags costs a read each, as before), at most
`MAX_BYTES` of them, least recently used first out; one larger than `MAX_BYTES // 16` (an index
of thousands of platforms) is always read afresh.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from pathlib import Path

from storage.metadata.manifests import ManifestRecord

#: Bytes of manifests remembered at most (a manifest is typically 0.5-5 KiB).
MAX_BYTES = 16 * 1024 * 1024

#: A manifest's key: (repository, "tag" or "digest", the tag or digest).
Key = tuple[str, str, str]


class CommitProbe:
    """Tells whether anything was committed to the database file since an earlier look."""

    def __init__(self, path: Path) -> None:
        # A connection of its own that never writes (its own commits would not count) and never
        # waits for a lock on the event loop (busy_timeout 0: an error, i.e. "cannot tell").
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute("PRAGMA busy_timeout = 0")

    def version(self) -> int | None:
        """SQLite's `data_version` now, or None when it cannot be read."""
        try:
            row = self._connection.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else int(row[0])

    def close(self) -> None:
        """Close the private connection."""
        self._connection.close()


class ManifestReads:
    """Manifests read under one `data_version`; all forgotten when it moves."""

    def __init__(self, probe: CommitProbe, max_bytes: int = MAX_BYTES) -> None:
        self.probe = probe
        self.max_bytes = max_bytes
        self._bytes = 0
        self._version: int | None = None
        self._entries: OrderedDict[Key, ManifestRecord] = OrderedDict()
        #: Answers given from memory (for tests: proof the cache was used).
        self.hits = 0

    def lookup(self, key: Key) -> tuple[ManifestRecord | None, int | None]:
        """The remembered manifest for `key` if nothing was committed since it was read, and
        the current version, which a read made now must be remembered under (`remember`)."""
        version = self.probe.version()
        if version is None or version != self._version:
            self.clear()
            self._version = version
            return None, version
        record = self._entries.get(key)
        if record is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return record, version

    def remember(self, key: Key, record: ManifestRecord, version: int | None) -> None:
        """Keep `record`, read after `lookup` returned `version`, while that version holds."""
        if version is None or version != self._version or record.size > self.max_bytes // 16:
            return  # a commit came between (the next lookup clears anyway), or too large
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        self._entries[key] = record
        self._bytes += record.size
        while self._bytes > self.max_bytes:
            self._bytes -= self._entries.popitem(last=False)[1].size

    def clear(self) -> None:
        """Forget every manifest."""
        self._entries.clear()
        self._bytes = 0
        self._version = None
