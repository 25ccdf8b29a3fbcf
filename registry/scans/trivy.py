"""Trivy's JSON report (`trivy image --format json`, schema version 2).

What we read: `Results[].Vulnerabilities[]` (`VulnerabilityID`, `Severity`, `PkgName`,
`InstalledVersion`, `FixedVersion`), the scan time `CreatedAt`, Trivy's version `Trivy.Version`
(written by recent releases; older reports say nothing, and the `scanner_version` query parameter
can tell it), and the image's `Metadata.RepoDigests` (`name@sha256:...`).
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
from storage.scan_reports import Finding, ParsedReport, severity


def looks_like(document: Mapping[str, Any]) -> bool:
    """Whether the document is shaped like a Trivy report."""
    return "SchemaVersion" in document and ("Results" in document or "ArtifactName" in document)


def parse(document: Mapping[str, Any]) -> ParsedReport:
    """The findings of a Trivy report (`ReportError` saying where it is malformed)."""
    version = field(document, "SchemaVersion", "report", int)
    if version != 2:
        raise ReportError(f"report.SchemaVersion: Trivy schema version {version} is not supported")
    results = field(document, "Results", "report", list, required=False) or []
    findings: list[Finding] = []
    for where, result in objects(results, "Results"):
        vulns = field(result, "Vulnerabilities", where, list, required=False) or []
        for at, vuln in objects(vulns, f"{where}.Vulnerabilities"):
            findings.append(
                Finding(
                    id=field(vuln, "VulnerabilityID", at, str),
                    severity=severity(field(vuln, "Severity", at, str)),
                    package=field(vuln, "PkgName", at, str),
                    installed=field(vuln, "InstalledVersion", at, str, required=False) or "",
                    fixed=field(vuln, "FixedVersion", at, str, required=False) or None,
                )
            )
    metadata = field(document, "Metadata", "report", dict, required=False) or {}
    digests = [
        d
        for ref in field(metadata, "RepoDigests", "Metadata", list, required=False) or []
        if isinstance(ref, str) and (d := digest_of_reference(ref)) is not None
    ]
    trivy = document.get("Trivy")
    tool_version = trivy.get("Version") if isinstance(trivy, dict) else None
    return ParsedReport(
        format="trivy",
        tool="trivy",
        tool_version=tool_version if isinstance(tool_version, str) and tool_version else "",
        scanned_at=parse_time(document.get("CreatedAt"), "report.CreatedAt"),
        digests=tuple(dict.fromkeys(digests)),
        findings=tuple(findings),
    )
