"""The spec's grammars for repository names, tags, references and digests.

Everything that comes from a URL is checked here before it can reach storage: a name or digest
that passes these checks cannot contain `..`, a slash where none belongs, or more than a bounded
number of characters.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from registry.errors import DIGEST_INVALID, NAME_INVALID, TAG_INVALID, RegistryError

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
#: Plain ASCII digits: `int()` and `str.isdigit()` also take `٣`, `²`, `1_000`, ` 7` and `+7`.
_DIGITS_RE = re.compile(r"[0-9]+")

#: Most digits a count, offset or timestamp from a request may have (int64 has 19).
MAX_DIGITS = 18

#: Longest repository name accepted (the reference registry's limit).
MAX_NAME_LENGTH = 255

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
        """The digest of `data`."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def parse_digest(text: str) -> Digest:
    """Parse and check a digest, or raise DIGEST_INVALID saying what is wrong."""
    match = DIGEST_RE.fullmatch(text)
    if match is None:
        raise RegistryError(DIGEST_INVALID, {"digest": text[:200], "reason": "malformed digest"})
    algorithm, encoded = match.groups()
    expected_length = ALGORITHMS.get(algorithm)
    if expected_length is None:
        raise RegistryError(
            DIGEST_INVALID,
            {"digest": text[:200], "reason": f"unsupported algorithm {algorithm!r}"},
        )
    if len(encoded) != expected_length or not re.fullmatch(r"[a-f0-9]+", encoded):
        raise RegistryError(
            DIGEST_INVALID,
            {
                "digest": text[:200],
                "reason": f"{algorithm} wants {expected_length} lowercase hex characters",
            },
        )
    return Digest(algorithm, encoded)


def parse_count(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """The non-negative integer `text` spells in ASCII digits (at most `max_digits`), or None.

    Everything a client sends as a number (`n=`, `Content-Range`, `Range`, timestamps) is read
    here: Python's `int()` accepts other scripts' digits, underscores, signs and spaces, and
    raises on more than 4,300 digits.
    """
    if len(text) > max_digits or _DIGITS_RE.fullmatch(text) is None:
        return None
    return int(text)


def is_digest(reference: str) -> bool:
    """Whether a manifest reference is a digest rather than a tag."""
    return ":" in reference


def check_name(name: str) -> str:
    """Return `name` if it is a valid repository name, else raise NAME_INVALID."""
    if len(name) > MAX_NAME_LENGTH or NAME_RE.fullmatch(name) is None:
        raise RegistryError(
            NAME_INVALID,
            {
                "name": name[:300],
                "reason": "must match [a-z0-9]+([._-][a-z0-9]+)*(/...)*, "
                f"at most {MAX_NAME_LENGTH} characters",
            },
        )
    return name


def check_tag(tag: str) -> str:
    """Return `tag` if it is a valid tag, else raise TAG_INVALID."""
    if TAG_RE.fullmatch(tag) is None:
        raise RegistryError(
            TAG_INVALID,
            {"tag": tag[:200], "reason": "must match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"},
        )
    return tag
