"""Attacks on the HMAC-signed webhooks (scan reports in, events out): a replay, a timestamp from
the future, a missing header. Each refusal is checked word for word."""

from __future__ import annotations

import pytest

from registry.events.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, TOLERANCE, sign, verify

NOW = 1_700_000_000
BODY = b'{"event":"push"}'
STALE = f"{TIMESTAMP_HEADER} is more than 300s from the server's clock"


@pytest.mark.parametrize("offset", [-TOLERANCE, TOLERANCE, 0])
def test_a_timestamp_at_the_edge_of_the_window_is_accepted(offset: float) -> None:
    headers = sign("s3cret", BODY, now=NOW + offset)
    assert verify("s3cret", headers, BODY, now=NOW) is None


@pytest.mark.parametrize("offset", [-TOLERANCE - 1, TOLERANCE + 1, 86_400 * 365, -86_400])
def test_a_timestamp_outside_the_window_is_refused_past_or_future(offset: float) -> None:
    # A signature dated a year ahead would let a captured request be replayed for a year.
    headers = sign("s3cret", BODY, now=NOW + offset)
    assert verify("s3cret", headers, BODY, now=NOW) == STALE


def test_a_narrower_tolerance_is_honoured() -> None:
    headers = sign("s3cret", BODY, now=NOW + 11)
    assert verify("s3cret", headers, BODY, now=NOW, tolerance=10) == (
        f"{TIMESTAMP_HEADER} is more than 10s from the server's clock"
    )


@pytest.mark.parametrize("drop", [TIMESTAMP_HEADER, SIGNATURE_HEADER])
def test_either_header_missing_is_refused(drop: str) -> None:
    headers = {k: v for k, v in sign("s3cret", BODY, now=NOW).items() if k != drop}
    assert verify("s3cret", headers, BODY, now=NOW) == (
        f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} headers are required"
    )


@pytest.mark.parametrize(
    "stamp",
    [
        "-1700000000",
        "1700000000.5",
        "1e9",
        " 1700000000",
        "\uff11\uff17" + "\uff10" * 8,
        "9" * 5000,
    ],
    ids=["negative", "fraction", "exponent", "space", "fullwidth-digits", "5000-digits"],
)
def test_a_timestamp_that_is_not_unix_seconds_is_refused(stamp: str) -> None:
    headers = {**sign("s3cret", BODY, now=NOW), TIMESTAMP_HEADER: stamp}
    assert (
        verify("s3cret", headers, BODY, now=NOW)
        == f"{TIMESTAMP_HEADER} must be Unix seconds in ASCII digits"
    )


def test_a_signature_moved_to_another_timestamp_is_refused() -> None:
    # The timestamp is signed: refreshing it on a captured request breaks the signature.
    headers = sign("s3cret", BODY, now=NOW - 3600)
    headers[TIMESTAMP_HEADER] = str(NOW)
    assert verify("s3cret", headers, BODY, now=NOW) == "the signature does not match the body"


def test_another_secret_is_refused() -> None:
    headers = sign("another", BODY, now=NOW)
    assert verify("s3cret", headers, BODY, now=NOW) == "the signature does not match the body"


def test_eighteen_digits_are_read_as_seconds_and_nineteen_are_refused() -> None:
    far = 999_999_999_999_999_999
    assert verify("s3cret", sign("s3cret", BODY, now=far), BODY, now=far) is None
    headers = {**sign("s3cret", BODY, now=NOW), TIMESTAMP_HEADER: "1" * 19}
    assert verify("s3cret", headers, BODY, now=NOW) == (
        f"{TIMESTAMP_HEADER} must be Unix seconds in ASCII digits"
    )
