"""Grype's JSON report (`grype -o json`).

What we read: `matches[]` (`vulnerability.id`, `vulnerability.severity`,
`vulnerability.fix.versions`, `artifact.name`, `artifact.version`), who scanned when
(`descriptor.name`, `descriptor.version`, `descriptor.timestamp`) and, for an image, the scanned
manifest (`source.target.manifestDigest`, `source.target.repoDigests`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from registry.scans.report_fields import digest_of_reference, field, objects, parse_time
from storage.scan_reports import Finding, ParsedReport, severity


def looks_like(document: Mapping[str, Any]) -> bool:
    """Whether the document is shaped like a Grype report."""
    return "matches" in document and "descriptor" in document


def parse(document: Mapping[str, Any]) -> ParsedReport:
    """The findings of a Grype report (`ReportError` saying where it is malformed)."""
    findings: list[Finding] = []
    for at, match in objects(field(document, "matches", "report", list), "matches"):
        vuln = field(match, "vulnerability", at, dict)
        artifact = field(match, "artifact", at, dict)
        fix = field(vuln, "fix", f"{at}.vulnerability", dict, required=False) or {}
        versions = field(fix, "versions", f"{at}.vulnerability.fix", list, required=False) or []
        fixed = ", ".join(v for v in versions if isinstance(v, str) and v)
        findings.append(
            Finding(
                id=field(vuln, "id", f"{at}.vulnerability", str),
                severity=severity(field(vuln, "severity", f"{at}.vulnerability", str)),
                package=field(artifact, "name", f"{at}.artifact", str),
                installed=field(artifact, "version", f"{at}.artifact", str, required=False) or "",
                fixed=fixed or None,
            )
        )
    descriptor = field(document, "descriptor", "report", dict)
    target: Mapping[str, Any] = {}
    source = document.get("source")
    if isinstance(source, dict) and source.get("type") == "image":
        target = source.get("target") if isinstance(source.get("target"), dict) else {}
    named = [target.get("manifestDigest"), *(target.get("repoDigests") or [])]
    digests = [d for ref in named if isinstance(ref, str) and (d := digest_of_reference(ref))]
    return ParsedReport(
        format="grype",
        tool=field(descriptor, "name", "descriptor", str),
        tool_version=field(descriptor, "version", "descriptor", str, required=False) or "",
        scanned_at=parse_time(descriptor.get("timestamp"), "descriptor.timestamp"),
        digests=tuple(dict.fromkeys(digests)),
        findings=tuple(findings),
    )
