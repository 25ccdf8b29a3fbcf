"""Trustyard's generic report, for scanners with neither Trivy's nor Grype's format::

    {
      "format": "trustyard.scan.v1",
      "digest": "sha256:...",                     # optional: or ?digest= on the URL
      "scanner": {"name": "clair", "version": "4.7.4"},
      "scanned_at": "2026-11-20T10:00:00Z",       # optional: the time it arrived otherwise
      "findings": [
        {"id": "CVE-2024-12345", "severity": "critical", "package": "openssl",
         "installed": "3.0.1", "fixed": "3.0.13"}  # fixed: null or absent when there is no fix
      ]
    }

`severity` is one of critical, high, medium, low, negligible, unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from registry.scans.report_fields import (
    ReportError,
    digest_of_reference,
    field,
    objects,
    parse_time,
)
from storage.scan_reports import SEVERITIES, Finding, ParsedReport

FORMAT = "trustyard.scan.v1"


def looks_like(document: Mapping[str, Any]) -> bool:
    """Whether the document says it is a generic report."""
    return document.get("format") == FORMAT


def parse(document: Mapping[str, Any]) -> ParsedReport:
    """The findings of a generic report (`ReportError` saying where it is malformed)."""
    if document.get("format") != FORMAT:
        raise ReportError(f'report.format: expected "{FORMAT}"')
    scanner = field(document, "scanner", "report", dict)
    findings: list[Finding] = []
    for at, item in objects(field(document, "findings", "report", list), "findings"):
        level = field(item, "severity", at, str)
        if level not in SEVERITIES:
            raise ReportError(f"{at}.severity: expected one of {', '.join(SEVERITIES)}")
        findings.append(
            Finding(
                id=field(item, "id", at, str),
                severity=level,
                package=field(item, "package", at, str),
                installed=field(item, "installed", at, str, required=False) or "",
                fixed=field(item, "fixed", at, str, required=False) or None,
            )
        )
    digest = field(document, "digest", "report", str, required=False)
    if digest is not None and digest_of_reference(digest) != digest:
        raise ReportError("report.digest: expected sha256:<64 hex> or sha512:<128 hex>")
    return ParsedReport(
        format="generic",
        tool=field(scanner, "name", "scanner", str),
        tool_version=field(scanner, "version", "scanner", str, required=False) or "",
        scanned_at=parse_time(document.get("scanned_at"), "report.scanned_at"),
        digests=(digest,) if digest else (),
        findings=tuple(findings),
    )
