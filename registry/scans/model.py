"""What a scan report says once parsed, whichever scanner wrote it: findings and who scanned when.

A finding is one vulnerability in one package. Severities are normalised to the lower-case names
of `SEVERITIES`; a vulnerability is *fixable* when every package it affects has a fixed version.
`Finding`, `SEVERITIES` and `summarise` live with the stored reports (`storage.metadata.scans`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from storage.metadata.scans import SEVERITIES, Finding, summarise

__all__ = [
    "SEVERITIES",
    "Finding",
    "ParsedReport",
    "ReportError",
    "digest_of_reference",
    "field",
    "objects",
    "parse_time",
    "severity",
    "summarise",
]


class ReportError(ValueError):
    """The body is not a report we understand; the message says precisely where and why."""


@dataclass(frozen=True, slots=True)
class ParsedReport:
    """A report reduced to what Trustyard keeps."""

    format: str  # trivy | grype | generic
    tool: str
    tool_version: str
    scanned_at: float | None  # epoch seconds; None when the report does not say
    digests: tuple[str, ...]  # manifest digests the report names (may be empty)
    findings: tuple[Finding, ...]


def severity(value: str) -> str:
    """A scanner's severity name in our spelling (`CRITICAL`, `Critical` -> `critical`)."""
    name = value.strip().lower()
    return name if name in SEVERITIES else "unknown"


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
