"""Who may read a quarantined image: the policy's `quarantine.readable_by`.

A quarantined image is stored but refused by its repository's pull rules (it waits for a
signature, a scan, ...). Signers must read it all the same: `cosign sign`, `sigstore attach` and
`notation sign` resolve the tag and GET the manifest they sign. So the producers of a repository
(the callers the registry's permissions allow to push to it) may read its quarantined images;
everyone else, pull-only deployers included, is refused as before.

`quarantine: {readable_by: {...}}` replaces that default with an explicit list: `users` and
`groups` name who may read (they still need pull permission), and `producers: true` keeps the
pushers among them. `readable_by: {}` lets nobody read a quarantined image.

Without authentication there are no producers (every caller is anonymous and may push): only an
explicit `users: [anonymous]` opens quarantined images to every caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class QuarantineReaders:
    """Who may read quarantined images besides what the pull rules allow."""

    producers: bool = True
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> QuarantineReaders:
        """From the policy's `quarantine:` section (already checked by the schema)."""
        readable_by = (section or {}).get("readable_by")
        if readable_by is None:
            return cls()
        return cls(
            producers=bool(readable_by.get("producers", False)),
            users=frozenset(readable_by.get("users", ())),
            groups=frozenset(readable_by.get("groups", ())),
        )

    def reader(
        self,
        repository: str,
        name: str,
        groups: Iterable[str],
        *,
        may_push: bool,
    ) -> str | None:
        """Why the caller `name` (in `groups`, allowed to push to `repository` or not) may read
        a quarantined image of `repository`, as the decision log records it; None: it may not."""
        if self.producers and may_push:
            return f"quarantined; read by a producer of {repository}"
        if name in self.users:
            return f"quarantined; read by {name} (quarantine.readable_by.users)"
        group = next((g for g in sorted(groups) if g in self.groups), None)
        if group is not None:
            return f"quarantined; read by {name} of group {group} (quarantine.readable_by.groups)"
        return None


#: The default: the producers of a repository may read its quarantined images.
PRODUCERS_READ = QuarantineReaders()
