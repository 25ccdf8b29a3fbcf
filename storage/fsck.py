"""`trustyard fsck`: re-hash every recorded blob and put corrupt ones out of service.

A blob whose stored bytes do not hash to its digest (or are missing, or of another length than
recorded) is reported and, unless told otherwise, moved to the store's quarantine. Its database
rows stay: the registry answers 404 BLOB_UNKNOWN for it ("damaged; push it again") instead of
wrong bytes, and a push of the right bytes puts a good copy back under its name.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from storage.blobstore import BlobStore
from storage.errors import BlobDamaged
from storage.metadata import MetadataDB
from storage.oci.digests import parse_digest

#: Blobs hashed at once (each streams in bounded chunks).
PARALLEL = 4

#: Blob rows read from the database per page.
PAGE = 500


@dataclass
class Problem:
    """One blob whose stored bytes are not what was recorded."""

    digest: str
    kind: str  # 'corrupt' | 'missing' | 'size'
    detail: str
    quarantined: bool = False


@dataclass
class FsckReport:
    """What a check found."""

    checked: int = 0
    bytes_hashed: int = 0
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every blob is intact."""
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        """The report as a JSON document (`fsck --json`)."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "bytes_hashed": self.bytes_hashed,
            "seconds": round(self.seconds, 3),
            "problems": [vars(problem) for problem in self.problems],
        }

    def lines(self) -> list[str]:
        """One line per problem, then a summary."""
        out = [
            f"{p.kind} blob {p.digest}: {p.detail}" + (" (quarantined)" if p.quarantined else "")
            for p in self.problems
        ]
        out.append(
            f"{self.checked} blobs checked ({self.bytes_hashed} bytes) in {self.seconds:.1f}s: "
            + ("all intact" if self.ok else f"{len(self.problems)} damaged")
        )
        return out


#: Called after each blob with (blobs checked, blobs in all, bytes hashed).
Progress = Callable[[int, int, int], None]


async def check_blobs(
    db: MetadataDB,
    store: BlobStore,
    *,
    quarantine: bool = True,
    progress: Progress | None = None,
) -> FsckReport:
    """Re-hash every recorded blob; report (and quarantine) the damaged ones."""
    started = time.monotonic()
    report = FsckReport()
    total = await db.blob_count()
    limit = asyncio.Semaphore(PARALLEL)

    async def check(digest_text: str, size: int) -> None:
        async with limit:
            problem = await _check_one(store, digest_text, size, report)
            if problem is not None:
                if quarantine and problem.kind != "missing":
                    await store.quarantine(parse_digest(digest_text))
                    problem.quarantined = True
                report.problems.append(problem)
            report.checked += 1
            if progress is not None:
                progress(report.checked, total, report.bytes_hashed)

    after = ""
    while True:
        page = await db.blobs_after(after, PAGE)
        if not page:
            break
        after = page[-1][0]
        await asyncio.gather(*(check(row[0], int(row[1])) for row in page))
    report.problems.sort(key=lambda p: p.digest)
    report.seconds = time.monotonic() - started
    return report


async def _check_one(
    store: BlobStore, digest_text: str, size: int, report: FsckReport
) -> Problem | None:
    digest = parse_digest(digest_text)
    found = await store.size(digest)
    if found is None:
        return Problem(digest_text, "missing", "no stored bytes")
    if found != size:
        return Problem(digest_text, "size", f"{found} bytes stored, {size} recorded")
    hasher = hashlib.new(digest.algorithm)
    loop = asyncio.get_running_loop()
    try:
        async for chunk in store.read(digest, 0, size):
            await loop.run_in_executor(None, hasher.update, chunk)
            report.bytes_hashed += len(chunk)
    except (BlobDamaged, FileNotFoundError):
        return Problem(digest_text, "missing", "the stored bytes went away while being read")
    actual = f"{digest.algorithm}:{hasher.hexdigest()}"
    if actual != digest_text:
        return Problem(digest_text, "corrupt", f"stored bytes hash to {actual}")
    return None
