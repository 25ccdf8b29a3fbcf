"""What a scan report says once parsed, whichever scanner wrote it: findings and who scanned when.

Kept by the scans store and read by the vulnerability rule (`policies.vulnerabilities`).

A finding is one vulnerability in one package. Severities are normalised to the lower-case names
below; a vulnerability is *fixable* when every package it affects has a fixed version.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: Severities from worst to mildest, as stored and as written in policies.
SEVERITIES = ("critical", "high", "medium", "low", "negligible", "unknown")


@dataclass(frozen=True, slots=True)
class Finding:
    """One vulnerability found in one installed package."""

    id: str
    severity: str
    package: str
    installed: str
    fixed: str | None  # the fixed version(s) as the scanner wrote them, None when no fix

    def as_json(self) -> dict[str, Any]:
        """The finding as the scans API shows it."""
        return {
            "id": self.id,
            "severity": self.severity,
            "package": self.package,
            "installed": self.installed,
            "fixed": self.fixed,
        }


@dataclass(frozen=True, slots=True)
class ParsedReport:
    """A report reduced to what Trustyard keeps."""

    format: str  # trivy | grype | generic
    tool: str
    tool_version: str
    scanned_at: float | None  # epoch seconds; None when the report does not say
    digests: tuple[str, ...]  # manifest digests the report names (may be empty)
    findings: tuple[Finding, ...]


def severity(value: str) -> str:
    """A scanner's severity name in our spelling (`CRITICAL`, `Critical` -> `critical`)."""
    name = value.strip().lower()
    return name if name in SEVERITIES else "unknown"


def summarise(findings: Iterable[Finding]) -> dict[str, Any]:
    """Counts by severity: findings, and distinct vulnerabilities fixable and not."""
    findings = list(findings)
    by_id: dict[tuple[str, str], list[Finding]] = {}
    for finding in findings:
        by_id.setdefault((finding.severity, finding.id), []).append(finding)
    counts: dict[str, dict[str, int]] = {}
    for level in SEVERITIES:
        ids = [group for (sev, _), group in by_id.items() if sev == level]
        fixable = sum(1 for group in ids if all(f.fixed for f in group))
        counts[level] = {
            "findings": sum(len(group) for group in ids),
            "vulnerabilities": len(ids),
            "fixable": fixable,
            "unfixable": len(ids) - fixable,
        }
    return {"findings": len(findings), "by_severity": counts}
