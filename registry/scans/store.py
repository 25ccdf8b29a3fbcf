"""Scan reports kept per (manifest digest, scanner) in `scan_reports` / `scan_findings`
(see `storage.layout`): a scanner's new report replaces its earlier one in one transaction, so
a reader sees the old report or the new one, never a mix.

A report never replaces a newer one from the same scanner (by `scanned_at`): an older report, a
late retry or a replayed body is refused (`StaleReport`), so a denied image cannot be flipped to
allowed by re-posting what the scanner said before. A signed post's HMAC signature is remembered
(`scan_signatures`) while its timestamp is inside the tolerance window, in the same transaction
as the report: the very same signed request again is refused (`ReplayedRequest`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.metadata import MetadataDB
from storage.scan_reports import Finding, ParsedReport, summarise


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
            "scanned_at": _iso(self.scanned_at),
            "received_at": _iso(self.received_at),
            "summary": self.summary,
        }
        if findings:
            shown["findings"] = [f.as_json() for f in self.findings]
        return shown


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


class StaleReport(ValueError):
    """The scanner already has a newer report on this manifest; the message says which."""


class ReplayedRequest(ValueError):
    """This signed request was already received."""


@dataclass(frozen=True, slots=True)
class Replay:
    """What identifies a signed post: its HMAC signature, remembered until `expires_at`."""

    signature: str
    expires_at: float


class ScanStore:
    """Reads and replaces scan reports in the metadata database."""

    def __init__(self, db: MetadataDB) -> None:
        self.db = db

    async def repositories_of(self, digest: str) -> list[str]:
        """The repositories holding a manifest with this digest (empty: unknown digest)."""
        rows = await self.db.read(
            "SELECT DISTINCT repository FROM manifests WHERE digest = ? ORDER BY repository",
            (digest,),
        )
        return [row[0] for row in rows]

    async def children_of(self, digest: str) -> list[str]:
        """The manifests an index with this digest lists (empty for an image)."""
        rows = await self.db.read(
            "SELECT DISTINCT child_digest FROM manifest_references "
            "WHERE manifest_digest = ? AND kind = 'manifest'",
            (digest,),
        )
        return [row[0] for row in rows]

    async def replace(
        self,
        digest: str,
        scanner: str,
        report: ParsedReport,
        received_at: float | None = None,
        *,
        signed_at: float | None = None,
        replay: Replay | None = None,
    ) -> StoredReport:
        """Store `report` as `scanner`'s report on `digest`, replacing its earlier one unless
        that one is newer (`StaleReport`); with `replay`, refuse a signature already received
        (`ReplayedRequest`) and remember this one. A report that does not say when it was
        scanned is dated by its signature's timestamp (`signed_at`), else by its arrival."""
        received = time.time() if received_at is None else received_at
        if report.scanned_at is not None:
            scanned = report.scanned_at
        else:
            scanned = signed_at if signed_at is not None else received
        stored = StoredReport(
            digest=digest,
            scanner=scanner,
            tool=report.tool,
            tool_version=report.tool_version,
            scanned_at=scanned,
            received_at=received,
            format=report.format,
            summary=summarise(report.findings),
            findings=report.findings,
        )
        async with self.db.transaction() as db:
            if replay is not None:
                await db.execute("DELETE FROM scan_signatures WHERE expires_at < ?", (received,))
                cursor = await db.execute(
                    "INSERT OR IGNORE INTO scan_signatures (signature, scanner, expires_at) "
                    "VALUES (?, ?, ?)",
                    (replay.signature, scanner, replay.expires_at),
                )
                if cursor.rowcount == 0:
                    raise ReplayedRequest("this signed request was already received (a replay)")
            rows = list(
                await db.execute_fetchall(
                    "SELECT scanned_at FROM scan_reports WHERE digest = ? AND scanner = ?",
                    (digest, scanner),
                )
            )
            row = rows[0] if rows else None
            if row is not None and float(row[0]) > scanned:
                raise StaleReport(
                    f"scanner {scanner} already has a newer report on {digest} (scanned at "
                    f"{_iso(float(row[0]))}; this one was scanned at {_iso(scanned)})"
                )
            # Findings go with their report (ON DELETE CASCADE).
            await db.execute(
                "DELETE FROM scan_reports WHERE digest = ? AND scanner = ?", (digest, scanner)
            )
            await db.execute(
                "INSERT INTO scan_reports (digest, scanner, tool, tool_version, scanned_at, "
                "received_at, format, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    digest,
                    scanner,
                    stored.tool,
                    stored.tool_version,
                    stored.scanned_at,
                    stored.received_at,
                    stored.format,
                    json.dumps(stored.summary),
                ),
            )
            await db.executemany(
                "INSERT INTO scan_findings (digest, scanner, vulnerability, severity, package, "
                "installed, fixed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (digest, scanner, f.id, f.severity, f.package, f.installed, f.fixed)
                    for f in report.findings
                ],
            )
        return stored

    async def reports(self, digests: Sequence[str]) -> list[StoredReport]:
        """Every scanner's report on these manifests, with findings, by digest then scanner."""
        if not digests:
            return []
        marks = ", ".join("?" for _ in digests)
        rows = await self.db.read(
            "SELECT digest, scanner, tool, tool_version, scanned_at, received_at, format, summary "
            f"FROM scan_reports WHERE digest IN ({marks}) ORDER BY digest, scanner",
            tuple(digests),
        )
        findings: dict[tuple[str, str], list[Finding]] = {}
        for row in await self.db.read(
            "SELECT digest, scanner, vulnerability, severity, package, installed, fixed "
            f"FROM scan_findings WHERE digest IN ({marks}) ORDER BY rowid",
            tuple(digests),
        ):
            findings.setdefault((row[0], row[1]), []).append(Finding(*row[2:]))
        return [
            StoredReport(
                digest=row[0],
                scanner=row[1],
                tool=row[2],
                tool_version=row[3],
                scanned_at=row[4],
                received_at=row[5],
                format=row[6],
                summary=json.loads(row[7]),
                findings=tuple(findings.get((row[0], row[1]), ())),
            )
            for row in rows
        ]


async def gather_scans(db: MetadataDB, digest: str) -> tuple[StoredReport, ...]:
    """The reports the `vulnerabilities` rule looks at for a manifest: its own and, for an index,
    its children's (a scanner may post against the platform image it pulled)."""
    store = ScanStore(db)
    return tuple(await store.reports([digest, *await store.children_of(digest)]))
