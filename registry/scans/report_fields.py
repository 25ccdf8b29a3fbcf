"""Reading a scanner's JSON: checked fields, RFC 3339 times, digests in references, and the
error that says precisely where a report is not what we understand."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any


class ReportError(ValueError):
    """The body is not a report we understand; the message says precisely where and why."""


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: Any, where: str) -> float | None:
    """An RFC 3339 time (nanoseconds allowed) as epoch seconds; None for an empty value."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ReportError(f"{where}: expected an RFC 3339 time, got {type(value).__name__}")
    text = _FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(f"{where}: expected an RFC 3339 time, got {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def field(
    document: Mapping[str, Any], key: str, where: str, kind: type, *, required: bool = True
) -> Any:
    """`document[key]` checked to be a `kind`; None when absent (or null) and not required."""
    value = document.get(key)
    if value is None:
        if required:
            raise ReportError(f"{where}.{key}: missing")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ReportError(f"{where}.{key}: expected {_KINDS.get(kind, kind.__name__)}")
    return value


_KINDS = {str: "a string", list: "a list", dict: "an object", int: "an integer"}


def objects(items: Iterable[Any], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each item of the report's list `where` as (`where[i]`, the item), checked to be an object."""
    for index, item in enumerate(items):
        at = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise ReportError(f"{at}: expected an object")
        yield at, item


def digest_of_reference(reference: str) -> str | None:
    """`sha256:...` from `name@sha256:...` (or a bare digest), else None."""
    _, _, digest = reference.rpartition("@")
    return digest if re.fullmatch(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}", digest) else None
