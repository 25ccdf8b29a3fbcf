"""Spans and moments as operators write them: `90s`, `15m`, `1h`, `7d`; `since` a moment."""

from __future__ import annotations

import re
import time
from datetime import datetime

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class DurationError(ValueError):
    """A duration that is not a number followed by one of ms, s, m, h, d."""


def parse_duration(text: str | float) -> float:
    """`90s`, `15m`, `1h`, `7d` (or a number of seconds) in seconds."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise DurationError(f"invalid duration {text!r}: use e.g. 90s, 15m, 1h, 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_since(text: str, now: float | None = None) -> float:
    """`since` as epoch seconds: a number, an ISO 8601 time, or a duration ago (`15m`, `2h`)."""
    now = time.time() if now is None else now
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            return now - parse_duration(text)
        except DurationError:
            raise ValueError(
                f"since={text!r}: expected epoch seconds, an ISO 8601 time or a duration "
                "such as 15m"
            ) from None
    try:
        return moment.timestamp()
    except (OverflowError, ValueError, OSError):
        raise ValueError(f"since={text!r}: a time out of range") from None
