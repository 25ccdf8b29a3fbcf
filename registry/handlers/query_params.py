"""Query parameters of Trustyard's own API (`/api/v1/...`): page sizes and cursors, refused with
QUERY_INVALID (or the spec's PAGINATION_NUMBER_INVALID for `n`) and a message that says why."""

from __future__ import annotations

from collections.abc import Mapping

from registry.errors import RegistryError
from storage.oci.errors import PAGINATION_NUMBER_INVALID, QUERY_INVALID

#: Longest query value echoed back in an error's detail.
ECHO = 100


def bad_query(name: str, value: str, reason: str) -> RegistryError:
    """The error for a query parameter that cannot be understood."""
    code = PAGINATION_NUMBER_INVALID if name == "n" else QUERY_INVALID
    return RegistryError(code, {name: value[:ECHO], "reason": reason}, message=f"{name}: {reason}")


def page_size(query: Mapping[str, str], default: int, maximum: int) -> int:
    """`n`: how many rows a page holds (1 to `maximum`; `default` when absent)."""
    text = query.get("n")
    if not text:
        return default
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= maximum:
        raise bad_query("n", text, f"expected an integer from 1 to {maximum}")
    return int(text)


def choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    """A parameter that takes one of a few words."""
    value = query.get(name) or default
    if value not in allowed:
        raise bad_query(name, value, f"expected one of {', '.join(allowed)}")
    return value


def text(query: Mapping[str, str], name: str, limit: int = 512) -> str | None:
    """A free-text parameter (None when absent or empty), at most `limit` characters."""
    value = query.get(name)
    if not value:
        return None
    if len(value) > limit or "\x00" in value:
        raise bad_query(name, value, f"expected at most {limit} characters, no NUL")
    return value
