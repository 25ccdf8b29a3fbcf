"""HMAC-SHA256 signatures over a timestamp and the raw body: how Trustyard signs the events it
sends, and how it checks the scan reports scanners post.

Two headers travel with a signed body::

    Trustyard-Timestamp: 1763640000                      (Unix seconds when it was signed)
    Trustyard-Signature: sha256=<hex>                    (HMAC-SHA256, key = the shared secret)

where the signed message is the timestamp's digits, a full stop, then the body's exact bytes:
``f"{timestamp}.".encode() + body``. A receiver recomputes it, compares in constant time, and
refuses timestamps more than five minutes away from its clock (a replayed request is then stale).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from storage.oci.grammar import parse_count

TIMESTAMP_HEADER = "Trustyard-Timestamp"
SIGNATURE_HEADER = "Trustyard-Signature"
#: How far a signed timestamp may be from the clock.
TOLERANCE = 300.0


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of the HMAC-SHA256 of `timestamp.body` under `secret`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def sign(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The two headers that sign `body` now."""
    timestamp = str(int(time.time() if now is None else now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
    tolerance: float = TOLERANCE,
) -> str | None:
    """None when `headers` sign `body` with `secret`; otherwise what is wrong, in words."""
    timestamp = headers.get(TIMESTAMP_HEADER)
    given = headers.get(SIGNATURE_HEADER)
    if not timestamp or not given:
        return f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} headers are required"
    seconds = parse_count(timestamp)
    if seconds is None:
        return f"{TIMESTAMP_HEADER} must be Unix seconds in ASCII digits"
    if abs((time.time() if now is None else now) - seconds) > tolerance:
        return f"{TIMESTAMP_HEADER} is more than {int(tolerance)}s from the server's clock"
    if not given.isascii() or not hmac.compare_digest(
        given.encode(), signature(secret, timestamp, body).encode()
    ):
        return "the signature does not match the body"
    return None
