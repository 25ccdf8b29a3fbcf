"""What the S3 backend keeps about an upload in progress, and the memory its uploads may use.

`UploadState` is the upload's record in the bucket (`_uploads/<id>/state`, see `storage.layout`):
the parts already sent to the multipart upload of its data object, the pieces holding the
acknowledged bytes that do not fill a part yet, and how far committing went. It is rewritten
(one PutObject, atomic) at the end of every request, after the bytes it names are stored; it is
therefore the truth about which bytes were acknowledged, whichever process reads it.

`UploadMemory` bounds the part buffers of all uploads of one process together: an upload needs one
part-sized buffer to receive into, and each part it sends while it keeps receiving needs another.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from storage.errors import UploadMemoryExhausted

#: Version of the state document; a state of another version is refused, never guessed at.
STATE_VERSION = 1


@dataclass
class Part:
    """One part sent to the multipart upload of an upload's data object."""

    etag: str
    size: int
    #: Its SHA-256 (base64) as S3 verified it; completion names it again.
    checksum: str | None = None


@dataclass
class UploadState:
    """An upload's durable record (the module docstring says what it is for).

    The acknowledged bytes are the parts, in order, then the pieces' bytes from where the parts
    end (a piece may begin before that: its first bytes went into a part since it was written).
    """

    generation: int = 0
    multipart: str | None = None
    parts: list[Part] = field(default_factory=list)
    pieces: list[tuple[int, int]] = field(default_factory=list)
    #: Set once the data object is complete (CompleteMultipartUpload answered): its size.
    data_size: int | None = None
    #: The verified digest the data object was completed for.
    digest: str | None = None
    #: A blob pointer names this upload's data object: abort must keep it.
    placed: bool = False

    @property
    def parts_end(self) -> int:
        """Bytes held by the parts (where the pieces' bytes continue)."""
        return sum(part.size for part in self.parts)

    @property
    def size(self) -> int:
        """Acknowledged bytes."""
        if not self.pieces:
            return self.parts_end
        start, size = self.pieces[-1]
        return max(self.parts_end, start + size)

    def to_json(self) -> bytes:
        """The document stored in the bucket."""
        return json.dumps(
            {
                "version": STATE_VERSION,
                "generation": self.generation,
                "multipart": self.multipart,
                "parts": [[part.etag, part.size, part.checksum] for part in self.parts],
                "pieces": [list(piece) for piece in self.pieces],
                "data_size": self.data_size,
                "digest": self.digest,
                "placed": self.placed,
                "written_at": time.time(),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> UploadState:
        """Read a stored document; ValueError when it is not one this version wrote."""
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise ValueError("upload state of an unknown version")
        return cls(
            generation=int(doc["generation"]),
            multipart=doc["multipart"],
            parts=[Part(str(etag), int(size), checksum) for etag, size, checksum in doc["parts"]],
            pieces=[(int(start), int(size)) for start, size in doc["pieces"]],
            data_size=doc["data_size"],
            digest=doc["digest"],
            placed=bool(doc["placed"]),
        )


class UploadMemory:
    """A byte budget shared by every upload of one process.

    `acquire` waits (up to `wait` seconds) for room, then refuses with 429 TOOMANYREQUESTS
    naming the budget: a client retries later, and memory stays bounded whatever the number of
    clients. `try_acquire` never waits (for optional read-ahead).
    """

    def __init__(self, capacity: int, wait: float) -> None:
        self.capacity = capacity
        self.wait = wait
        self.used = 0
        #: The most ever held at once (tests and metrics read it).
        self.peak = 0
        self._waiters: list[asyncio.Future[None]] = []
        #: Called with the bytes wanted when there is no room: frees what can be dropped
        #: (bytes kept only to save a read).
        self.evict: Callable[[int], None] | None = None

    def try_acquire(self, size: int) -> bool:
        """Take `size` bytes if they are free now."""
        if self.used + size > self.capacity:
            return False
        self.used += size
        self.peak = max(self.peak, self.used)
        return True

    async def acquire(self, size: int, holders: int) -> None:
        """Take `size` bytes, waiting for room; refuse after `wait` seconds."""
        if size > self.capacity:
            raise self._refusal(size, holders)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while not self.try_acquire(size):
            if self.evict is not None:
                self.evict(size)
                if self.try_acquire(size):
                    return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._refusal(size, holders)
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def release(self, size: int) -> None:
        """Give back `size` bytes and wake whoever waits for room (each tries again)."""
        self.used -= size
        assert self.used >= 0, "upload memory released twice"
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _refusal(self, size: int, holders: int) -> UploadMemoryExhausted:
        mib = 1024 * 1024
        reason = (
            f"the registry's upload memory ({self.capacity // mib} MiB, "
            f"storage.s3.upload_memory) is in use by {holders} uploads; "
            f"no room for another {size // mib} MiB part buffer: retry later"
        )
        return UploadMemoryExhausted(reason, retry_after=5)
