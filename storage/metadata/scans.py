"""Scan reports kept per (manifest digest, scanner): the stored model and the interface that keeps
it (`ScanStore` in `storage.metadata.scan_store` is what the scans webhook calls).

Rows: `scan_reports`, `scan_findings`, `scan_signatures` (see `storage.layout`). A scanner's new
report replaces its earlier one in one transaction, so a reader sees the old report or the new
one, never a mix.

A report never replaces a newer one from the same scanner (by `scanned_at`): an older report, a
late retry or a replayed body is refused (`StaleReport`), so a denied image cannot be flipped to
allowed by re-posting what the scanner said before. A signed post's HMAC signature is remembered
(`scan_signatures`) while its timestamp is inside the tolerance window, in the same transaction
as the report: the very same signed request again is refused (`ReplayedRequest`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.scan_reports import Finding


@dataclass(frozen=True, slots=True)
class StoredReport:
    """A scanner's latest report on a manifest."""

    digest: str
    scanner: str  # the configured scanner that posted it
    tool: str
    tool_version: str
    scanned_at: float
    received_at: float
    format: str
    summary: dict[str, Any]
    findings: tuple[Finding, ...]

    @property
    def scanned_by(self) -> str:
        """`trivy 0.57.0`, or the tool alone when the report gave no version."""
        return f"{self.tool} {self.tool_version}".strip()

    def as_json(self, *, findings: bool = True) -> dict[str, Any]:
        """The report as the scans API shows it."""
        shown: dict[str, Any] = {
            "digest": self.digest,
            "scanner": self.scanner,
            "tool": self.tool,
            "tool_version": self.tool_version,
            "format": self.format,
            "scanned_at": iso(self.scanned_at),
            "received_at": iso(self.received_at),
            "summary": self.summary,
        }
        if findings:
            shown["findings"] = [f.as_json() for f in self.findings]
        return shown


def iso(moment: float) -> str:
    """`2026-12-02T01:02:03Z`: how reports show a moment."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


class StaleReport(ValueError):
    """The scanner already has a newer report on this manifest; the message says which."""

    def __init__(self, report: StoredReport, newer_scanned_at: float) -> None:
        super().__init__(
            f"scanner {report.scanner} already has a newer report on {report.digest} (scanned "
            f"at {iso(newer_scanned_at)}; this one was scanned at {iso(report.scanned_at)})"
        )


class ReplayedRequest(ValueError):
    """This signed request was already received."""


@dataclass(frozen=True, slots=True)
class Replay:
    """What identifies a signed post: its HMAC signature, remembered until `expires_at`."""

    signature: str
    expires_at: float


class ScanRecords(ABC):
    """Scan reports with their findings, and the signatures of signed posts."""

    @abstractmethod
    async def replace_scan_report(self, report: StoredReport, replay: Replay | None) -> None:
        """Make `report` its scanner's report on its digest, in one transaction: refuse it
        when the scanner's stored report was scanned later (`StaleReport`); with `replay`,
        forget expired signatures, refuse one already received (`ReplayedRequest`) and
        remember this one."""

    @abstractmethod
    async def scan_reports(self, digests: Sequence[str]) -> list[StoredReport]:
        """Every scanner's report on these manifests, with findings (in the order they were
        stored), by digest then scanner."""
