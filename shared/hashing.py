"""Hashing small data on the event loop without letting go of the GIL.

CPython's `hashlib` releases the GIL while it hashes 2048 bytes or more in one call, so that
other threads run meanwhile. For a few KiB (a push token, a manifest) that costs more than it
gives on the event loop: the hash takes microseconds, but the GIL goes to whichever thread
waits for it (the database writer), and the loop then waits to get it back, up to a switch
interval. Fed in pieces under that size, the same digest is computed with the GIL held.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

#: Bytes per `update` call: under 2048, from which `hashlib` releases the GIL.
PIECE = 2000

#: Up to this size, data is hashed holding the GIL; larger data is hashed in one call, which
#: lets other threads run while it hashes (a large manifest takes milliseconds).
HOLD_GIL_BELOW = 64 * 1024


class Hash(Protocol):
    """What of a `hashlib` hash object this module feeds."""

    def update(self, data: bytes | memoryview, /) -> None: ...


def update_holding_gil(digest: Hash, data: bytes) -> None:
    """Feed `data` to `digest`: in pieces that keep the GIL when under `HOLD_GIL_BELOW`."""
    if len(data) >= HOLD_GIL_BELOW:
        digest.update(data)
        return
    view = memoryview(data)
    for start in range(0, len(view), PIECE):
        digest.update(view[start : start + PIECE])


def hashed(algorithm: str, data: bytes) -> hashlib._Hash:
    """The `hashlib` hash (`algorithm`) of `data`, fed by `update_holding_gil`."""
    digest = hashlib.new(algorithm)
    update_holding_gil(digest, data)
    return digest
