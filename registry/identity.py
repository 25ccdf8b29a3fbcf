"""Who is making a request, as the rest of the registry sees it (set by authentication)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True)
class Identity:
    """An authenticated (or anonymous) caller."""

    name: str
    kind: str = "anonymous"  # anonymous | user | robot | scanner
    groups: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_anonymous(self) -> bool:
        """Whether nobody authenticated."""
        return self.kind == "anonymous"


ANONYMOUS = Identity("anonymous")

#: Request key under which authentication stores the caller's `Identity`.
IDENTITY_KEY = "trustyard_identity"


def identity(request: web.Request) -> Identity:
    """The caller of `request` (anonymous when authentication is off or absent)."""
    found = request.get(IDENTITY_KEY)
    return found if isinstance(found, Identity) else ANONYMOUS
