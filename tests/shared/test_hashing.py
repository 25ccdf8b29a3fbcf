"""Small data hashed holding the GIL: the same digest as one `hashlib` call, fed in pieces
`hashlib` hashes without letting go of the GIL, at every size around the pieces' edges."""

from __future__ import annotations

import hashlib
import os

import pytest

from shared.hashing import HOLD_GIL_BELOW, PIECE, update_holding_gil
from storage.oci.digests import Digest

SIZES = [0, 1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 5, HOLD_GIL_BELOW - 1, HOLD_GIL_BELOW]


class Recording:
    """A sha256 that remembers the size of every piece it was fed."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.pieces: list[int] = []

    def update(self, data: bytes | memoryview, /) -> None:
        self.pieces.append(len(data))
        self.digest.update(data)


@pytest.mark.parametrize("size", [*SIZES, HOLD_GIL_BELOW + 1])
def test_the_digest_is_the_one_of_the_whole_data(size: int) -> None:
    data = os.urandom(size)
    fed = Recording()
    update_holding_gil(fed, data)
    assert fed.digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert sum(fed.pieces) == size
    assert Digest.of(data) == Digest("sha256", hashlib.sha256(data).hexdigest())
    assert Digest.of(data, "sha512") == Digest("sha512", hashlib.sha512(data).hexdigest())


@pytest.mark.parametrize("size", SIZES[1:-1])
def test_small_data_is_fed_in_pieces_hashlib_hashes_holding_the_gil(size: int) -> None:
    fed = Recording()
    update_holding_gil(fed, os.urandom(size))
    assert fed.pieces and max(fed.pieces) < 2048  # CPython's HASHLIB_GIL_MINSIZE


def test_large_data_is_hashed_in_one_call_letting_other_threads_run() -> None:
    fed = Recording()
    update_holding_gil(fed, os.urandom(HOLD_GIL_BELOW + 1))
    assert fed.pieces == [HOLD_GIL_BELOW + 1]
