"""Scan reports in SQLite (`storage.metadata.scans`)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from storage.metadata.scans import Replay, ReplayedRequest, StaleReport, StoredReport
from storage.metadata.sqlite.connection import SQLiteBase, fetch_one
from storage.scan_reports import Finding


class SQLiteScans(SQLiteBase):
    """`ScanRecords` on SQLite."""

    async def replace_scan_report(self, report: StoredReport, replay: Replay | None) -> None:
        """Make `report` its scanner's report on its digest, unless stale or replayed."""
        async with self.transaction() as db:
            if replay is not None:
                await db.execute(
                    "DELETE FROM scan_signatures WHERE expires_at < ?", (report.received_at,)
                )
                cursor = await db.execute(
                    "INSERT OR IGNORE INTO scan_signatures (signature, scanner, expires_at) "
                    "VALUES (?, ?, ?)",
                    (replay.signature, report.scanner, replay.expires_at),
                )
                if cursor.rowcount == 0:
                    raise ReplayedRequest("this signed request was already received (a replay)")
            row = await fetch_one(
                db,
                "SELECT scanned_at FROM scan_reports WHERE digest = ? AND scanner = ?",
                (report.digest, report.scanner),
            )
            if row is not None and float(row[0]) > report.scanned_at:
                raise StaleReport(report, float(row[0]))
            # Findings go with their report (ON DELETE CASCADE).
            await db.execute(
                "DELETE FROM scan_reports WHERE digest = ? AND scanner = ?",
                (report.digest, report.scanner),
            )
            await db.execute(
                "INSERT INTO scan_reports (digest, scanner, tool, tool_version, scanned_at, "
                "received_at, format, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    report.digest,
                    report.scanner,
                    report.tool,
                    report.tool_version,
                    report.scanned_at,
                    report.received_at,
                    report.format,
                    json.dumps(report.summary),
                ),
            )
            await db.executemany(
                "INSERT INTO scan_findings (digest, scanner, vulnerability, severity, package, "
                "installed, fixed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        report.digest,
                        report.scanner,
                        f.id,
                        f.severity,
                        f.package,
                        f.installed,
                        f.fixed,
                    )
                    for f in report.findings
                ],
            )

    async def scan_reports(self, digests: Sequence[str]) -> list[StoredReport]:
        """Every scanner's report on these manifests, with findings, by digest then scanner."""
        if not digests:
            return []
        marks = ", ".join("?" for _ in digests)
        rows = await self._all(
            "SELECT digest, scanner, tool, tool_version, scanned_at, received_at, format, summary "
            f"FROM scan_reports WHERE digest IN ({marks}) ORDER BY digest, scanner",
            tuple(digests),
        )
        findings: dict[tuple[str, str], list[Finding]] = {}
        for row in await self._all(
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
