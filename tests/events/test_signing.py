"""HMAC-SHA256 over the timestamp and the raw body, as documented for receivers."""

from __future__ import annotations

import hashlib
import hmac

from registry.events.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify


def test_signature_is_hmac_of_timestamp_dot_body() -> None:
    body = b'{"id":"1"}'
    headers = sign("s3cret", body, now=1_700_000_000)
    assert headers[TIMESTAMP_HEADER] == "1700000000"
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert verify("s3cret", headers, body, now=1_700_000_100) is None


def test_tampered_stale_or_missing() -> None:
    body = b"{}"
    headers = sign("s3cret", body, now=1_700_000_000)
    assert verify("s3cret", headers, b"{ }", now=1_700_000_000) == (
        "the signature does not match the body"
    )
    assert verify("other", headers, body, now=1_700_000_000) is not None
    assert "from the server's clock" in (verify("s3cret", headers, body, now=1_700_001_000) or "")
    assert "headers are required" in (verify("s3cret", {}, body) or "")
