"""Query parameters read one way: a parameter the registry acts on may appear at most once.

With `?digest=A&digest=B`, a proxy or an audit log that reads the last value and a handler that
reads the first would disagree about what was uploaded, mounted or listed, so a repeated
parameter is refused with the error its handler would give for a bad value.
"""

from __future__ import annotations

from aiohttp import web

from registry.errors import RegistryError
from storage.oci.errors import ErrorCode


def single(request: web.Request, name: str, error: ErrorCode) -> str | None:
    """The one value of query parameter `name` (None when absent); `error` when repeated."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise RegistryError(
            error,
            {name: [v[:100] for v in values[:5]], "reason": f"{name} given more than once"},
            message=f"query parameter {name} given more than once",
        )
    return values[0] if values else None
