"""The ops console: server-rendered pages about the library, the quarantine, the decisions, the
repositories and the registry's health, served by Trustyard itself under `/console/`.

Every page reads the public management API (`/api/v1/...`, see `registry.console.api_client`)
and renders a Jinja2 template from `templates/`; the stylesheet and the one small script are in
`static/` and served from here: nothing is fetched from elsewhere. Logging in is
`registry.console.login` over `registry.auth.sessions`.
"""

from __future__ import annotations

import functools
from pathlib import Path

from aiohttp import web

from registry.auth.sessions import setup_sessions
from registry.console import login, pages
from registry.console.rendering import compile_templates
from registry.expect import expect_continue

STATIC = Path(__file__).parent / "static"


def setup_console(app: web.Application) -> None:
    """Mount the console's routes (after authentication is set up)."""
    setup_sessions(app)
    compile_templates()
    add = functools.partial(app.router.add_get, expect_handler=expect_continue)
    add("/console", pages.home)
    add("/console/", pages.home)
    add("/console/login", login.login_page)
    app.router.add_post("/console/login", login.login, expect_handler=expect_continue)
    app.router.add_post("/console/logout", login.logout, expect_handler=expect_continue)
    add("/console/library", login.guarded(pages.library))
    add("/console/quarantine", login.guarded(pages.quarantine))
    add("/console/decisions", login.guarded(pages.decisions))
    add("/console/repositories", login.guarded(pages.repositories))
    # The manifest route first: `{repository:.+}` would swallow `/-/<reference>` otherwise.
    add(
        "/console/repositories/{repository:.+}/-/{reference:[^/]+}",
        login.guarded(pages.manifest),
    )
    add("/console/repositories/{repository:.+}", login.guarded(pages.repository))
    add("/console/health", login.guarded(pages.health))
    app.router.add_static("/console/static/", STATIC, expect_handler=expect_continue)
