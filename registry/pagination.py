"""The `n` / `last` query parameters and `Link` header shared by tags/list and _catalog."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from registry.errors import RegistryError
from registry.query import single
from storage.oci.errors import PAGINATION_NUMBER_INVALID
from storage.oci.grammar import parse_count

#: Most entries one page returns, whatever `n` asks; the `Link` header leads to the rest.
MAX_PAGE = 10_000


@dataclass(frozen=True)
class Page:
    """A requested page: at most `limit` entries after `last`."""

    limit: int
    last: str | None

    @classmethod
    def from_request(cls, request: web.Request) -> Page:
        """Read `n` and `last`; PAGINATION_NUMBER_INVALID for an `n` that is not a count."""
        text = single(request, "n", PAGINATION_NUMBER_INVALID)
        if text is None or text == "":
            limit = MAX_PAGE
        else:
            count = parse_count(text)
            if count is None:
                raise RegistryError(
                    PAGINATION_NUMBER_INVALID,
                    {"n": text[:50], "reason": f"n must be 0 to {MAX_PAGE} in ASCII digits"},
                )
            limit = min(count, MAX_PAGE)
        last = single(request, "last", PAGINATION_NUMBER_INVALID)
        # No name or tag holds a NUL, so the entries after "a\x00…" are exactly those after "a";
        # cut there (PostgreSQL text cannot carry a NUL at all).
        return cls(limit, (last or "").split("\x00", 1)[0] or None)

    def link(self, path: str, entries: list[str], more: bool) -> dict[str, str]:
        """The `Link` header to the next page, if there is one."""
        if not more or not entries:
            return {}
        query = urlencode({"n": self.limit, "last": entries[-1]})
        return {"Link": f'<{path}?{query}>; rel="next"'}
