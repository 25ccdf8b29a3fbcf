"""Turning API documents into HTML: one Jinja2 environment (autoescaping on, templates shipped in
the package), the filters the templates use, and what every page knows (who is logged in, the
CSRF token of the logout form)."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from registry.auth.service import AUTH, CALLER_KEY, Caller
from registry.auth.sessions import SESSION_KEY, Session

TEMPLATES = Path(__file__).parent / "templates"

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,  # templates ship with the package: no stat per page
)


def compile_templates() -> None:
    """Compile every template now (at start-up), not on a page's first request."""
    for name in _ENV.list_templates(extensions=["html"]):
        _ENV.get_template(name)


def _moment(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def ago(value: Any) -> str:
    """`3 min ago`, `in 2 h`: a time relative to now."""
    moment = _moment(value)
    if moment is None:
        return "—"
    delta = time.time() - moment
    future = delta < 0
    delta = abs(delta)
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= seconds:
            amount = f"{int(delta // seconds)} {unit}"
            break
    else:
        return "just now"
    return f"in {amount}" if future else f"{amount} ago"


def utc(value: Any) -> str:
    """`2026-12-01 21:47 UTC`."""
    moment = _moment(value)
    if moment is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


def size(value: Any) -> str:
    """A byte count for people: `12.3 MB`."""
    if not isinstance(value, int | float):
        return "—"
    amount = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if amount < 1000 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{amount:.1f} TB"  # pragma: no cover - unreachable


def short(digest: Any) -> str:
    """`sha256:0123456789ab`: enough of a digest to tell it apart on a page."""
    text = str(digest or "")
    algorithm, sep, hex_part = text.partition(":")
    return f"{algorithm}:{hex_part[:12]}" if sep and len(hex_part) > 12 else text


def reference(value: Any) -> str:
    """A tag or digest short enough for a table cell (cosign's `.sig` tags are 75 characters)."""
    text = str(value or "")
    if ":" in text:
        return short(text)
    return text if len(text) <= 32 else f"{text[:18]}…{text[-10:]}"


_COSIGN_TAG = re.compile(r"sha256-([0-9a-f]{64})\.(sig|att|sbom)")
_COSIGN_KINDS = {"sig": "signature", "att": "attestation", "sbom": "SBOM"}


def cosign_tag(name: Any) -> str | None:
    """`signature of sha256:0123456789ab` for cosign's `sha256-<hex>.sig` tags (and .att,
    .sbom), else None."""
    match = _COSIGN_TAG.fullmatch(str(name))
    if match is None:
        return None
    return f"{_COSIGN_KINDS[match[2]]} of sha256:{match[1][:12]}"


_ENV.filters.update(
    ago=ago, utc=utc, size=size, short=short, reference=reference, cosign_tag=cosign_tag
)


def caller(request: web.Request) -> Caller | None:
    """Who is looking (None when authentication is off)."""
    if AUTH not in request.app:
        return None
    found = request.get(CALLER_KEY)
    return found if isinstance(found, Caller) else None


def render(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    """A page: `template` rendered with `values` and what every page shows."""
    who = caller(request)
    session = request.get(SESSION_KEY)
    page = _ENV.get_template(template).render(
        auth=AUTH in request.app,
        user=None if who is None or who.identity.is_anonymous else who.identity.name,
        logout_csrf=session.csrf if isinstance(session, Session) else None,
        path=request.path,
        **values,
    )
    return web.Response(
        text=page,
        status=status,
        content_type="text/html",
        headers={
            # Every asset is ours; inline SVG needs no script. Framing is refused (clickjacking).
            "Content-Security-Policy": (
                "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store",
        },
    )
