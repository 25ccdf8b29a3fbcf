"""`POST /api/v1/scans` and `GET /api/v1/scans/{digest}`: scanner authentication, precise errors,
nothing partial stored, a scanner's new report replacing its old one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.events.signing import sign
from tests.oci import push_image
from tests.scans.conftest import HMAC_SECRET, SCANNERS, bearer

FIXTURES = Path(__file__).parent / "fixtures"
TRIVY = (FIXTURES / "trivy-alpine-39-high-critical.json").read_bytes()
GRYPE = (FIXTURES / "grype-image-presenter.json").read_bytes()


@pytest.fixture
async def scanning(start_client: Any) -> TestClient:
    return await start_client(scanners=SCANNERS, scans={"max_body": "64KiB"})


async def get_reports(client: TestClient, digest: str) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/scans/{digest}")
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_trivy_report_stored_with_findings(scanning: TestClient) -> None:
    digest, _ = await push_image(scanning, "prod/app", "v1")
    resp = await scanning.post(
        f"/api/v1/scans?digest={digest}&scanner_version=0.57.0", data=TRIVY, headers=bearer()
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["scanner"] == "trivy-ci" and body["tool"] == "trivy"
    assert body["tool_version"] == "0.57.0" and body["repositories"] == ["prod/app"]
    assert body["summary"]["by_severity"]["critical"]["vulnerabilities"] == 1
    shown = await get_reports(scanning, digest)
    (report,) = shown["reports"]
    raw = json.loads(TRIVY)
    expected = [
        (v["VulnerabilityID"], v["PkgName"], v["FixedVersion"])
        for r in raw["Results"]
        for v in r["Vulnerabilities"]
    ]
    assert [(f["id"], f["package"], f["fixed"]) for f in report["findings"]] == expected
    assert report["scanned_at"] == report["received_at"]  # this report carries no CreatedAt


async def test_hmac_signed_grype_report_and_replacement(scanning: TestClient) -> None:
    digest, _ = await push_image(scanning, "prod/app", "v1")
    await push_image(scanning, "other/app", "v1")  # same content: same digest, two repositories
    headers = {**sign(HMAC_SECRET, GRYPE), "Content-Type": "application/json"}
    resp = await scanning.post(f"/api/v1/scans?digest={digest}", data=GRYPE, headers=headers)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["repositories"] == ["other/app", "prod/app"]
    resp = await scanning.post(f"/api/v1/scans?digest={digest}", data=TRIVY, headers=bearer())
    assert resp.status == 201
    reports = (await get_reports(scanning, digest))["reports"]
    assert [r["scanner"] for r in reports] == ["grype-nightly", "trivy-ci"]
    # grype-nightly posts again, a generic report now: it replaces its earlier one whole.
    generic = json.dumps(
        {
            "format": "trustyard.scan.v1",
            "scanner": {"name": "grype", "version": "0.80.0"},
            "findings": [{"id": "CVE-9", "severity": "high", "package": "z", "installed": "1"}],
        }
    ).encode()
    resp = await scanning.post(
        f"/api/v1/scans?digest={digest}", data=generic, headers=sign(HMAC_SECRET, generic)
    )
    assert resp.status == 201, await resp.text()
    reports = (await get_reports(scanning, digest))["reports"]
    assert [(r["scanner"], len(r["findings"])) for r in reports] == [
        ("grype-nightly", 1),
        ("trivy-ci", 2),
    ]


@pytest.mark.parametrize(
    ("make_headers", "message"),
    [
        (dict, "scanner authentication failed: Trustyard-Timestamp and Trustyard-Signature"),
        (
            lambda: bearer("not-a-scanner-token-at-all"),
            "the bearer token is not a configured scanner's",
        ),
        (
            lambda: {"Trustyard-Timestamp": "1", "Trustyard-Signature": "sha256=00"},
            "more than 300s from the server's clock",
        ),
        (
            lambda: sign("wrong-secret-0123456789", TRIVY),
            "the signature does not match the body",
        ),
        (
            lambda: {**sign(HMAC_SECRET, TRIVY), "Trustyard-Scanner": "nobody"},
            "no HMAC scanner named 'nobody'",
        ),
    ],
)
async def test_wrong_credentials_401(
    scanning: TestClient, make_headers: Callable[[], dict[str, str]], message: str
) -> None:
    # Headers are signed when the test runs, not when it is collected: signatures carry a
    # timestamp the server accepts only within 300 s.
    headers = make_headers()
    digest, _ = await push_image(scanning, "prod/app", "v1")
    resp = await scanning.post(f"/api/v1/scans?digest={digest}", data=TRIVY, headers=headers)
    assert resp.status == 401
    assert message in (await resp.json())["errors"][0]["message"]
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await get_reports(scanning, digest))["reports"] == []


async def test_no_scanners_configured_401(client: TestClient) -> None:
    resp = await client.post("/api/v1/scans", data=TRIVY)
    assert resp.status == 401
    assert "no scanners are configured" in await resp.text()


async def test_unknown_digest_404(scanning: TestClient) -> None:
    unknown = "sha256:" + "0" * 64
    resp = await scanning.post(f"/api/v1/scans?digest={unknown}", data=TRIVY, headers=bearer())
    assert resp.status == 404
    body = await resp.json()
    assert body["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert "push the image before posting its scan" in body["errors"][0]["message"]
    # The grype snapshot names its own (unknown) manifest digest: used when no ?digest=.
    resp = await scanning.post("/api/v1/scans", data=GRYPE, headers=sign(HMAC_SECRET, GRYPE))
    assert resp.status == 404
    assert "sha256:ca738abb87a8" in await resp.text()
    assert (await scanning.get(f"/api/v1/scans/{unknown}")).status == 404


async def test_repository_parameter_must_hold_the_manifest(scanning: TestClient) -> None:
    digest, _ = await push_image(scanning, "prod/app", "v1")
    url = f"/api/v1/scans?digest={digest}&repository=dev/app"
    resp = await scanning.post(url, data=TRIVY, headers=bearer())
    assert resp.status == 404
    assert "in repository dev/app" in await resp.text()


@pytest.mark.parametrize(
    ("query", "body", "code", "message"),
    [
        ("", TRIVY, "SCAN_INVALID", "the report names no image digest; add ?digest="),
        ("digest={digest}&format=snyk", TRIVY, "SCAN_INVALID", "format 'snyk' is not known"),
        ("digest={digest}", b"<html>", "SCAN_INVALID", "the body is not JSON"),
        ("digest={digest}", b'{"SchemaVersion": 2, "Results": 3}', "SCAN_INVALID", "Results"),
        ("digest={digest}&format=grype", TRIVY, "SCAN_INVALID", "report.matches: missing"),
        ("digest=sha256:abc", TRIVY, "DIGEST_INVALID", "digest='sha256:abc' is not a digest"),
    ],
)
async def test_bad_bodies_400_and_nothing_stored(
    scanning: TestClient, query: str, body: bytes, code: str, message: str
) -> None:
    digest, _ = await push_image(scanning, "prod/app", "v1")
    resp = await scanning.post(f"/api/v1/scans?digest={digest}", data=TRIVY, headers=bearer())
    assert resp.status == 201
    resp = await scanning.post(
        f"/api/v1/scans?{query.format(digest=digest)}", data=body, headers=bearer()
    )
    assert resp.status == 400
    error = (await resp.json())["errors"][0]
    assert error["code"] == code and message in error["message"]
    (kept,) = (await get_reports(scanning, digest))["reports"]
    assert len(kept["findings"]) == 2  # the earlier report is still there, whole


async def test_body_over_limit_413(scanning: TestClient) -> None:
    digest, _ = await push_image(scanning, "prod/app", "v1")
    big = json.dumps({"SchemaVersion": 2, "Results": [], "padding": "x" * 70_000}).encode()
    resp = await scanning.post(f"/api/v1/scans?digest={digest}", data=big, headers=bearer())
    assert resp.status == 413
    assert "65536 byte limit" in (await resp.json())["errors"][0]["message"]

    async def chunked() -> Any:  # no Content-Length: the limit holds while reading
        for _ in range(10):
            yield b"x" * 10_000

    resp = await scanning.post(f"/api/v1/scans?digest={digest}", data=chunked(), headers=bearer())
    assert resp.status == 413
    assert (await get_reports(scanning, digest))["reports"] == []


async def test_webhook_with_auth_on(start_client: Any, data_dir: Path) -> None:
    """With accounts on, the webhook still takes the scanner's own credential, and the scans
    API stays for administrators."""
    from tests.auth.conftest import auth_section, write_accounts

    write_accounts(data_dir)
    client = await start_client(scanners=SCANNERS, auth=auth_section())
    from tests.auth.conftest import PASSWORDS, As, basic

    olga = As(client, basic("olga", PASSWORDS["olga"]))
    digest, _ = await push_image(olga, "prod/app", "v1")
    # The scanner's token stores a report: the webhook took the scanner's own credential.
    resp = await client.post(f"/api/v1/scans?digest={digest}", data=TRIVY, headers=bearer())
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["scanner"] == "trivy-ci"
    resp = await client.post(f"/api/v1/scans?digest={digest}", data=TRIVY, headers=bearer("x" * 20))
    assert resp.status == 401
    assert "the bearer token is not a configured scanner's" in await resp.text()
    assert (await client.get(f"/api/v1/scans/{digest}")).status == 401
    assert (await olga.get(f"/api/v1/scans/{digest}")).status == 200
