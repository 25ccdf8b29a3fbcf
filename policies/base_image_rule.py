"""The `base_image` requirement: images are built on a current, supported library image.

```yaml
require:
  base_image: {from_library: true, allow_deprecated: false, max_behind: 30d}
```

- `from_library`: every platform image must be built on a declared library tag (found by
  lineage: the longest library image whose layers start the image).
- `allow_deprecated` (default true): false refuses a base past its `supported_until` day.
- `max_behind`: a base whose tag has moved on is accepted for at most this long after it was
  replaced; then the image must be rebuilt.

Both limits are reached by time alone: an allow says when (`valid_until`), so a cached pull
decision does not outlive them.

A library image with `signed_by` is a base only at digests signed so (`policies.library.signing`):
an image built on a digest pushed to its tag but not signed is refused while `from_library`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar

from policies.decisions import Decision, day_end, earliest
from policies.facts import LINEAGE
from policies.library.declaration import Library
from policies.library.lineage import Lineage, base_length
from policies.library.signing import wanted
from policies.rules import Context, short


def format_age(seconds: float) -> str:
    """`41 days`, `5 hours`, `3 minutes`: how long ago, in the largest whole unit."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return "moments"


@dataclass(frozen=True)
class BaseImage:
    """Every platform image is built on a declared, supported, recent enough library image."""

    library: Library
    from_library: bool = True
    allow_deprecated: bool = True
    max_behind: float | None = None  # seconds
    max_behind_text: str = ""  # as written in the policy file, for messages
    clock: Callable[[], float] = field(default=time.time, compare=False)
    needs: ClassVar[frozenset[str]] = frozenset({LINEAGE})

    def evaluate(self, context: Context) -> Decision:
        """Deny an image built on no library image, a deprecated one, or one replaced too long
        ago."""
        image = context.image
        if image.is_artifact:
            return Decision.allow("not a container image; base_image does not apply")
        lineages: tuple[Lineage, ...] = image.lineage or ()
        if not lineages:
            if self.from_library:
                return Decision.deny(
                    "the image's layers could not be read to find what it is built on"
                )
            return Decision.allow("no platform image to check")
        now = self.clock()
        bases = []
        limits = []
        for lineage in lineages:
            where = f" ({lineage.platform})" if image.is_index and lineage.platform else ""
            problem = self._problem(lineage, now, where)
            if problem is not None:
                return Decision.deny(problem)
            limits.append(self._limit(lineage))
            if lineage.base is not None:
                bases.append(f"{lineage.base.reference}{where}")
        if not bases:
            return Decision.allow("not built on a library image; only library bases are checked")
        return Decision.allow(
            f"built on {', '.join(dict.fromkeys(bases))}", valid_until=earliest(limits)
        )

    def _problem(self, lineage: Lineage, now: float, where: str) -> str | None:
        """What is wrong with one platform image's base, in words, or None."""
        base = lineage.base
        if base is None:
            if not self.from_library:
                return None
            closest = lineage.closest
            if closest is None:
                return (
                    f"image{where} is not built on a library image (the library holds no image "
                    "to build on)"
                )
            return (
                f"image{where} is not built on a library image (closest: {closest.reference} "
                f"shares {lineage.shared} of {base_length(closest.image)} layers)"
            )
        declared = self.library.image(base.name)
        if declared is None or base.tag not in declared.tags:
            if not self.from_library:
                return None
            return (
                f"image{where} is built on {base.reference}, which is no longer declared in the "
                "library; rebuild on a library image"
            )
        if base.pending:
            if not self.from_library:
                return None
            return (
                f"image{where} is built on {base.reference}@{short(base.digest)}, which is not "
                f"signed by {wanted(declared)} (signed_by), so not a library image yet; sign it "
                f"or rebuild on the library's current {base.reference}"
            )
        today = datetime.fromtimestamp(now, UTC).date()
        if not self.allow_deprecated and declared.deprecated(today):
            return (
                f"image{where} is built on {base.reference}, deprecated since "
                f"{declared.supported_until} (supported_until); rebuild on a supported library "
                "image"
            )
        if self.max_behind is not None and base.replaced_at is not None:
            behind = now - base.replaced_at
            # From the instant the allow's `valid_until` names (as at the end of support).
            if behind >= self.max_behind:
                return (
                    f"image{where} is built on {base.reference}@{short(base.digest)} which was "
                    f"replaced {format_age(behind)} ago (max_behind {self.max_behind_text}); "
                    "rebuild"
                )
        return None

    def _limit(self, lineage: Lineage) -> float | None:
        """When time alone makes an accepted base a problem: the end of its `supported_until` day
        (unless deprecated bases are allowed), or `max_behind` after it was replaced; None when
        neither limit applies to it."""
        base = lineage.base
        declared = None if base is None or base.pending else self.library.image(base.name)
        if base is None or declared is None or base.tag not in declared.tags:
            return None
        moments = []
        if not self.allow_deprecated and declared.supported_until is not None:
            moments.append(day_end(declared.supported_until))
        if self.max_behind is not None and base.replaced_at is not None:
            moments.append(base.replaced_at + self.max_behind)
        return earliest(moments)
