"""What the scans webhook, the scans API and the `vulnerabilities` rule call to store and read
scan reports, over the metadata interface (`storage.metadata.scans` holds the stored report,
`storage.scan_reports` what a report says)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from storage.metadata.interface import MetadataDB
from storage.metadata.scans import Replay, StoredReport
from storage.scan_reports import ParsedReport, summarise


class ScanStore:
    """Reads and replaces scan reports through the metadata interface."""

    def __init__(self, db: MetadataDB) -> None:
        self.db = db

    async def repositories_of(self, digest: str) -> list[str]:
        """The repositories holding a manifest with this digest (empty: unknown digest)."""
        return await self.db.repositories_holding(digest)

    async def children_of(self, digest: str) -> list[str]:
        """The manifests an index with this digest lists (empty for an image)."""
        return await self.db.index_children(digest)

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
        await self.db.replace_scan_report(stored, replay)
        return stored

    async def reports(self, digests: Sequence[str]) -> list[StoredReport]:
        """Every scanner's report on these manifests, with findings, by digest then scanner."""
        return await self.db.scan_reports(digests)


async def gather_scans(db: MetadataDB, digest: str) -> tuple[StoredReport, ...]:
    """The reports the `vulnerabilities` rule looks at for a manifest: its own and, for an index,
    its children's (a scanner may post against the platform image it pulled)."""
    return tuple(await db.scan_reports([digest, *await db.index_children(digest)]))
