"""The spec's grammars for repository names, tags and references, and for numbers in requests.

Everything that comes from a URL is checked here before it can reach storage: a name or digest
that passes these checks cannot contain `..`, a slash where none belongs, or more than a bounded
number of characters.
"""

from __future__ import annotations

import re

from storage.oci.errors import NAME_INVALID, TAG_INVALID, OciError

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
#: Plain ASCII digits: `int()` and `str.isdigit()` also take `٣`, `²`, `1_000`, ` 7` and `+7`.
_DIGITS_RE = re.compile(r"[0-9]+")

#: Most digits a count, offset or timestamp from a request may have (int64 has 19).
MAX_DIGITS = 18

#: Longest repository name accepted (the reference registry's limit).
MAX_NAME_LENGTH = 255


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
        raise OciError(
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
        raise OciError(
            TAG_INVALID,
            {"tag": tag[:200], "reason": "must match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"},
        )
    return tag
