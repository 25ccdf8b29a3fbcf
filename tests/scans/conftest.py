"""A registry with two scanners configured: one with a bearer token, one signing with HMAC."""

from __future__ import annotations

from typing import Any

TOKEN = "trivy-ci-token-0123456789"
HMAC_SECRET = "grype-hmac-secret-0123456789"

SCANNERS: list[dict[str, Any]] = [
    {"name": "trivy-ci", "token": TOKEN},
    {"name": "grype-nightly", "hmac_secret": HMAC_SECRET},
]


def bearer(token: str = TOKEN) -> dict[str, str]:
    """The scanner's `Authorization` header."""
    return {"Authorization": f"Bearer {token}"}
