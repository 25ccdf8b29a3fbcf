"""The parsers on real reports from Trivy's and Grype's own test data (see fixtures/SOURCES.md):
counts are checked against counts computed here straight from the raw JSON."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from registry.scans.formats import parse_report
from registry.scans.report_fields import ReportError
from storage.scan_reports import summarise

FIXTURES = Path(__file__).parent / "fixtures"
TRIVY = FIXTURES / "trivy-alpine-39-high-critical.json"
GRYPE = FIXTURES / "grype-image-presenter.json"


def raw_trivy_counts(document: dict[str, Any]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for result in document.get("Results") or []:
        for vuln in result.get("Vulnerabilities") or []:
            counts[vuln["Severity"].lower()] += 1
    return counts


def raw_grype_counts(document: dict[str, Any]) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    unfixed = 0
    for match in document["matches"]:
        counts[match["vulnerability"]["severity"].lower()] += 1
        unfixed += not match["vulnerability"]["fix"]["versions"]
    return counts, unfixed


def test_trivy_report() -> None:
    body = TRIVY.read_bytes()
    report = parse_report(body)
    raw = json.loads(body)
    assert report.format == "trivy" and report.tool == "trivy"
    assert Counter(f.severity for f in report.findings) == raw_trivy_counts(raw)
    assert len(report.findings) == sum(raw_trivy_counts(raw).values()) == 2
    musl = report.findings[0]
    assert (musl.id, musl.package, musl.installed, musl.fixed) == (
        "CVE-2019-14697",
        "musl",
        "1.1.20-r4",
        "1.1.20-r5",
    )
    # The same CVE in two packages: two findings, one vulnerability, fixable in both.
    critical = summarise(report.findings)["by_severity"]["critical"]
    assert critical == {"findings": 2, "vulnerabilities": 1, "fixable": 1, "unfixable": 0}
    assert report.digests == ()  # an image tarball: the webhook needs ?digest=


def test_grype_report() -> None:
    body = GRYPE.read_bytes()
    report = parse_report(body)
    raw = json.loads(body)
    counts, unfixed = raw_grype_counts(raw)
    assert report.format == "grype" and report.tool == "grype"
    assert report.tool_version == "[not provided]"
    assert Counter(f.severity for f in report.findings) == counts
    assert sum(1 for f in report.findings if f.fixed is None) == unfixed == 1
    assert report.findings[0].fixed == "1.2.1, 2.1.3, 3.4.0"
    assert report.digests == (raw["source"]["target"]["manifestDigest"],)
    assert report.scanned_at is None  # the snapshot's timestamp is empty


def test_generic_report() -> None:
    body = json.dumps(
        {
            "format": "trustyard.scan.v1",
            "digest": "sha256:" + "a" * 64,
            "scanner": {"name": "clair", "version": "4.7.4"},
            "scanned_at": "2026-11-20T10:00:00.123456789Z",
            "findings": [
                {"id": "CVE-1", "severity": "high", "package": "p", "installed": "1"},
                {"id": "CVE-2", "severity": "low", "package": "q", "fixed": "2"},
            ],
        }
    ).encode()
    report = parse_report(body)
    assert (report.tool, report.tool_version, report.digests) == (
        "clair",
        "4.7.4",
        ("sha256:" + "a" * 64,),
    )
    assert [f.fixed for f in report.findings] == [None, "2"]
    assert report.scanned_at == pytest.approx(1795168800.123456)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "the body is not JSON: Expecting property name"),
        (b"[1, 2]", "the report must be a JSON object"),
        (b'{"hello": 1}', "not a report we recognise"),
        (
            b'{"SchemaVersion": 2, "Results": [{"Vulnerabilities": [{"PkgName": "x"}]}]}',
            "Results[0].Vulnerabilities[0].VulnerabilityID: missing",
        ),
        (b'{"SchemaVersion": 1, "Results": []}', "Trivy schema version 1 is not supported"),
        (
            b'{"matches": [{"vulnerability": {"id": 5}, "artifact": {}}], '
            b'"descriptor": {"name": "grype"}}',
            "matches[0].vulnerability.id: expected a string",
        ),
        (
            b'{"format": "trustyard.scan.v1", "scanner": {"name": "x"}, '
            b'"findings": [{"id": "a", "severity": "awful", "package": "p"}]}',
            "findings[0].severity: expected one of critical",
        ),
    ],
)
def test_malformed_reports_say_where(body: bytes, message: str) -> None:
    with pytest.raises(ReportError) as info:
        parse_report(body)
    assert message in str(info.value)


def test_unknown_format_name() -> None:
    with pytest.raises(ReportError, match="format 'snyk' is not known"):
        parse_report(TRIVY.read_bytes(), "snyk")
