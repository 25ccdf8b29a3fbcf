"""Content digests: the `algorithm:hex` names every blob and manifest is stored under.

A digest that passes `parse_digest` names an algorithm we verify and has exactly that
algorithm's number of lowercase hex characters, so it is safe to use in a storage path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from shared.hashing import hashed
from storage.oci.errors import DIGEST_INVALID, OciError

DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")

#: Digest algorithms we verify, with the length of their hex encoding.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}


@dataclass(frozen=True, slots=True)
class Digest:
    """A verified `algorithm:hex` content digest."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of `data` (a manifest of a few KiB is hashed holding the GIL: see
        `shared.hashing`)."""
        return cls(algorithm, hashed(algorithm, data).hexdigest())


def parse_digest(text: str) -> Digest:
    """Parse and check a digest, or raise DIGEST_INVALID saying what is wrong."""
    match = DIGEST_RE.fullmatch(text)
    if match is None:
        raise OciError(DIGEST_INVALID, {"digest": text[:200], "reason": "malformed digest"})
    algorithm, encoded = match.groups()
    expected_length = ALGORITHMS.get(algorithm)
    if expected_length is None:
        raise OciError(
            DIGEST_INVALID,
            {"digest": text[:200], "reason": f"unsupported algorithm {algorithm!r}"},
        )
    if len(encoded) != expected_length or not re.fullmatch(r"[a-f0-9]+", encoded):
        raise OciError(
            DIGEST_INVALID,
            {
                "digest": text[:200],
                "reason": f"{algorithm} wants {expected_length} lowercase hex characters",
            },
        )
    return Digest(algorithm, encoded)
