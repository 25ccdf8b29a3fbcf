"""The `vulnerabilities` requirement: how many known vulnerabilities an image may carry, by
severity, going by the latest report of each scanner (`registry.scans`).

```yaml
require:
  vulnerabilities:
    max: {critical: 0, high: 5}      # vulnerabilities that have a fixed version
    max_unfixable: {critical: 2}     # with no fix yet (a severity left out: not counted)
    require_scan: true               # no (recent enough) scan: deny; false: allow
    max_scan_age: 7d
    exceptions:
      - {id: CVE-2024-12345, until: 2027-01-31, reason: "not reachable; tracked in SEC-42"}
```

A vulnerability is counted once however many packages it affects, and is fixable when every one
of those packages has a fixed version. An exception stops a vulnerability counting until the end
of its `until` day (UTC); after that it counts again and the reason says so. Every scanner's
latest report must hold. Denials list what counted:
`2 critical (CVE-…, CVE-…) > 0 allowed; scanned by trivy 0.57.0 on 2026-11-20`.

Decisions are cached until evidence changes (a new report bumps it) or time alone changes the
answer: each decision's `valid_until` is the moment the first counted scan ages past
`max_scan_age` or the first exception that applies runs out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, ClassVar

from policies.decisions import Decision, day_end, earliest
from policies.facts import SCANS
from policies.rules import Context, short
from shared.durations import DurationError, parse_duration
from storage.metadata.scans import StoredReport
from storage.scan_reports import SEVERITIES

#: IDs named in a reason at most, per count.
SHOWN_IDS = 5


@dataclass(frozen=True)
class VulnerabilityException:
    """A vulnerability accepted until a day, for a reason."""

    id: str
    until: date
    reason: str

    def active(self, today: date) -> bool:
        """Whether the exception still holds on `today` (its `until` day included)."""
        return today <= self.until


def _day(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).date().isoformat()


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return shown + (f", +{len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


@dataclass(frozen=True)
class Vulnerabilities:
    """Limits on known vulnerabilities by severity, fixable and not."""

    max: Mapping[str, int] = field(default_factory=dict)
    max_unfixable: Mapping[str, int] = field(default_factory=dict)
    require_scan: bool = True
    max_scan_age: float | None = None
    max_scan_age_text: str = ""
    exceptions: tuple[VulnerabilityException, ...] = ()
    clock: Callable[[], float] = field(default=time.time, compare=False, repr=False)
    needs: ClassVar[frozenset[str]] = frozenset({SCANS})

    def evaluate(self, context: Context) -> Decision:
        """Deny an image over a limit, or without a recent enough scan when one is required."""
        image = context.image
        if image.is_artifact:
            return Decision.allow("not a container image; vulnerability limits do not apply")
        now = self.clock()
        reports = image.scans or ()
        fresh = [
            r
            for r in reports
            # Counted while younger than `max_scan_age`: the instant it reaches that age is
            # the decision's `valid_until`, which the cached decision ends at (half-open).
            if self.max_scan_age is None or now < r.scanned_at + self.max_scan_age
        ]
        if not fresh:
            if reports:
                latest = max(reports, key=lambda r: r.scanned_at)
                missing = (
                    f"the latest scan ({latest.scanned_by} on {_day(latest.scanned_at)}) is "
                    f"{self.max_scan_age_text} old or older"
                )
            else:
                missing = f"no vulnerability scan of {short(image.digest)} yet"
            if self.require_scan:
                return Decision.deny(f"{missing}; a scan is required before pulling")
            return Decision.allow(f"{missing}; scans are not required")
        today = datetime.fromtimestamp(now, UTC).date()
        until = self._valid_until(fresh, today)
        failures, passes = [], []
        for report in fresh:
            over, notes = self._check(report, today)
            scanned = f"scanned by {report.scanned_by} on {_day(report.scanned_at)}"
            if over:
                failures.append("; ".join([", ".join(over + notes), scanned]))
            else:
                passes.append("; ".join([", ".join(["within limits", *notes]), scanned]))
        if failures:
            return Decision.deny(" | ".join(failures), valid_until=until)
        return Decision.allow(" | ".join(passes), valid_until=until)

    def _valid_until(self, fresh: list[StoredReport], today: date) -> float | None:
        """When time alone may change the answer: the first counted report ageing past
        `max_scan_age`, or the first exception that applies running out (after its `until` day).
        """
        moments: list[float] = []
        if self.max_scan_age is not None:
            moments = [r.scanned_at + self.max_scan_age for r in fresh]
        found = {f.id for r in fresh for f in r.findings}
        moments += [day_end(e.until) for e in self.exceptions if e.id in found and e.active(today)]
        return earliest(moments)

    def _check(self, report: StoredReport, today: date) -> tuple[list[str], list[str]]:
        """What is over a limit in one report, and notes on the exceptions that applied."""
        excepted = {e.id: e for e in self.exceptions}
        groups: dict[tuple[str, str], bool] = {}  # (severity, id) -> fixable
        for finding in report.findings:
            key = (finding.severity, finding.id)
            groups[key] = groups.get(key, True) and finding.fixed is not None
        notes: list[str] = []
        for vuln_id in dict.fromkeys(i for _, i in groups):
            exception = excepted.get(vuln_id)
            if exception is None:
                continue
            if exception.active(today):
                notes.append(f"{vuln_id} excepted until {exception.until}: {exception.reason}")
            else:
                notes.append(f"the exception for {vuln_id} expired on {exception.until}")
        counted = {
            key: fixable
            for key, fixable in groups.items()
            if key[1] not in excepted or not excepted[key[1]].active(today)
        }
        over: list[str] = []
        for level in SEVERITIES:
            fixable = sorted(i for (s, i), fix in counted.items() if s == level and fix)
            unfixable = sorted(i for (s, i), fix in counted.items() if s == level and not fix)
            limit = self.max.get(level)
            if limit is not None and len(fixable) > limit:
                over.append(f"{len(fixable)} {level} ({_ids(fixable)}) > {limit} allowed")
            limit = self.max_unfixable.get(level)
            if limit is not None and len(unfixable) > limit:
                over.append(
                    f"{len(unfixable)} {level} without a fix ({_ids(unfixable)}) > {limit} allowed"
                )
        return over, notes


def build(
    spec: Mapping[str, Any], problem: Callable[[tuple[str | int, ...], str], None]
) -> Vulnerabilities:
    """The requirement from its schema-valid policy section; `problem(path, message)` reports
    what the schema cannot see (an impossible date, a malformed duration)."""
    exceptions = []
    for index, entry in enumerate(spec.get("exceptions") or []):
        try:
            until = date.fromisoformat(str(entry["until"]))
        except ValueError:
            problem(("exceptions", index, "until"), f"not a date: {entry['until']!r}")
            continue
        exceptions.append(VulnerabilityException(str(entry["id"]), until, str(entry["reason"])))
    age_text = spec.get("max_scan_age")
    age = None
    if age_text is not None:
        try:
            age = parse_duration(age_text)
        except DurationError as exc:
            problem(("max_scan_age",), str(exc))
    return Vulnerabilities(
        max=dict(spec.get("max") or {}),
        max_unfixable=dict(spec.get("max_unfixable") or {}),
        require_scan=bool(spec.get("require_scan", True)),
        max_scan_age=age,
        max_scan_age_text=str(age_text or "").strip(),
        exceptions=tuple(exceptions),
    )
