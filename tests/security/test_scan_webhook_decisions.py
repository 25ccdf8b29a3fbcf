"""Attacks on the scan webhook (`POST /api/v1/scans`) by someone holding one scanner's
credentials or a captured request: a report signed by one scanner posted under another's name,
a scan posted for a repository that does not hold the image, a signed request sent again, an
older report sent after a newer one. Each is refused with its status, code and reason."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.events.signing import sign
from tests.oci import push_image

ALPHA = "alpha-hmac-secret-0123456789"
BETA = "beta-hmac-secret-0123456789"
SCANNERS = [{"name": "alpha", "hmac_secret": ALPHA}, {"name": "beta", "hmac_secret": BETA}]


def generic(cve: str) -> bytes:
    return json.dumps(
        {
            "format": "trustyard.scan.v1",
            "scanner": {"name": "grype", "version": "0.80.0"},
            "findings": [{"id": cve, "severity": "high", "package": "z", "installed": "1"}],
        }
    ).encode()


@pytest.fixture
async def scanning(start_client: Any) -> TestClient:
    return await start_client(scanners=SCANNERS)


async def error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    [entry] = (await resp.json())["errors"]
    return entry


async def reports(client: TestClient, digest: str) -> list[tuple[str, list[str]]]:
    resp = await client.get(f"/api/v1/scans/{digest}")
    assert resp.status == 200, await resp.text()
    return [
        (r["scanner"], [f["id"] for f in r["findings"]]) for r in (await resp.json())["reports"]
    ]


@pytest.mark.parametrize(("named", "secret"), [("alpha", BETA), ("beta", ALPHA)])
async def test_a_report_signed_by_another_scanner_than_the_one_named_is_refused(
    scanning: TestClient, named: str, secret: str
) -> None:
    digest, _ = await push_image(scanning, "prod/app", "v1")
    body = generic("CVE-1")
    headers = {**sign(secret, body), "Trustyard-Scanner": named}
    resp = await scanning.post(f"/api/v1/scans?digest={digest}", data=body, headers=headers)
    entry = await error(resp, 401)
    assert entry["message"] == (
        "scanner authentication failed: the signature does not match the body "
        "(send Authorization: Bearer <token>, or sign the body)"
    )
    assert await reports(scanning, digest) == []


@pytest.mark.parametrize("wanted", ["aa/app", "zz/app"])
async def test_a_scan_for_a_repository_without_the_image_is_refused(
    scanning: TestClient, wanted: str
) -> None:
    """Repositories sorting before and after the one that holds the image."""
    digest, _ = await push_image(scanning, "prod/app", "v1")
    body = generic("CVE-1")
    url = f"/api/v1/scans?digest={digest}&repository={wanted}"
    resp = await scanning.post(url, data=body, headers=sign(ALPHA, body))
    entry = await error(resp, 404)
    assert entry["code"] == "MANIFEST_UNKNOWN"
    assert entry["message"] == (
        f"no manifest {digest} in repository {wanted}: push the image before posting its scan"
    )
    assert await reports(scanning, digest) == []


async def test_a_signed_request_sent_again_is_refused(scanning: TestClient) -> None:
    digest, _ = await push_image(scanning, "prod/app", "v1")
    body = generic("CVE-1")
    headers = sign(ALPHA, body)
    url = f"/api/v1/scans?digest={digest}"
    assert (await scanning.post(url, data=body, headers=headers)).status == 201
    entry = await error(await scanning.post(url, data=body, headers=headers), 401)
    assert entry["code"] == "UNAUTHORIZED"
    assert entry["message"] == (
        "scanner authentication failed: this signed request was already received (a replay)"
    )
    assert await reports(scanning, digest) == [("alpha", ["CVE-1"])]


async def test_an_older_report_after_a_newer_one_is_refused(scanning: TestClient) -> None:
    digest, _ = await push_image(scanning, "prod/app", "v1")
    url = f"/api/v1/scans?digest={digest}"
    now = time.time()
    newer, older = generic("CVE-NEW"), generic("CVE-OLD")
    assert (await scanning.post(url, data=newer, headers=sign(ALPHA, newer, now))).status == 201
    resp = await scanning.post(url, data=older, headers=sign(ALPHA, older, now - 100))
    entry = await error(resp, 409)
    assert entry["code"] == "SCAN_STALE"
    assert entry["message"].startswith(f"scanner alpha already has a newer report on {digest}")
    assert await reports(scanning, digest) == [("alpha", ["CVE-NEW"])]


LIMIT = 100_001  # not a multiple of the size the body is read in


@pytest.fixture
async def limited(start_client: Any) -> TestClient:
    return await start_client(scanners=SCANNERS, scans={"max_body": LIMIT})


def padded(size: int) -> bytes:
    """A valid report of exactly `size` bytes (JSON allows trailing whitespace)."""
    body = generic("CVE-1")
    return body + b" " * (size - len(body))


async def test_a_report_of_exactly_the_limit_is_taken_streamed_or_not(limited: TestClient) -> None:
    digest, _ = await push_image(limited, "prod/app", "v1")
    body = padded(LIMIT)

    async def streamed() -> Any:  # no Content-Length
        for start in range(0, len(body), 7_000):
            yield body[start : start + 7_000]

    for data in (body, streamed()):
        # The same signed body twice would be a replay: each scanner posts it once.
        resp = await limited.post(
            f"/api/v1/scans?digest={digest}",
            data=data,
            headers=sign(ALPHA if isinstance(data, bytes) else BETA, body),
        )
        assert resp.status == 201, await resp.text()
    assert await reports(limited, digest) == [("alpha", ["CVE-1"]), ("beta", ["CVE-1"])]


async def test_a_streamed_report_over_the_limit_is_refused(limited: TestClient) -> None:
    digest, _ = await push_image(limited, "prod/app", "v1")
    body = padded(3 * LIMIT)

    async def streamed() -> Any:
        for start in range(0, len(body), 7_000):
            yield body[start : start + 7_000]

    resp = await limited.post(
        f"/api/v1/scans?digest={digest}", data=streamed(), headers=sign(ALPHA, body)
    )
    entry = await error(resp, 413)
    assert entry["code"] == "SCAN_TOO_LARGE"
    assert entry["message"] == f"scan report larger than the {LIMIT} byte limit (scans.max_body)"
    assert await reports(limited, digest) == []
