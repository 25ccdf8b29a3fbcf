"""Logging in to the console and out again, and the guard in front of every page.

With authentication off the console is open like the rest of the registry. With it on, a page
needs a caller who may read the management API (a registry administrator or a `viewer`):
anybody else is sent to the login form, or told they may not look. The session itself is
`registry.auth.sessions`."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web

from registry.auth.service import AUTH
from registry.auth.sessions import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_KEY,
    SESSIONS,
    Session,
    cookie_options,
    csrf_matches,
    same_origin,
)
from registry.console.rendering import caller, render
from registry.errors import ANSWERABLE, status_for

Page = Callable[[web.Request], Awaitable[web.StreamResponse]]
HOME = "/console/library"
#: Longest form field read (a password is far shorter; the form is never a file upload).
MAX_FIELD = 1024


def guarded(page: Page) -> Page:
    """`page`, served only to callers who may read the management API."""

    async def serve(request: web.Request) -> web.StreamResponse:
        service = request.app.get(AUTH)
        if service is None:
            return await page(request)
        who = caller(request)
        if who is None or who.identity.is_anonymous:
            # Encoded whole, so the page's own query survives as one `next` value.
            target = quote(request.path_qs, safe="/")
            raise web.HTTPSeeOther(f"/console/login?next={target}")
        if not service.permissions.can_view(who.identity):
            return render(
                request,
                "error.html",
                status=403,
                title="Not allowed",
                message=(
                    f"{who.identity.name} may not use the console: it needs a registry "
                    "administrator or a viewer."
                ),
            )
        return await page(request)

    serve.__doc__ = page.__doc__
    return serve


def _safe_next(target: str | None) -> str:
    """Where to go after login: only a console path of this server (no open redirect)."""
    if not target or not target.startswith("/console/") or target.startswith("/console/login"):
        return HOME
    if "//" in target or "\\" in target or any(ord(c) < 0x20 for c in target):
        return HOME
    return target


def _login_form(
    request: web.Request, *, message: str | None = None, status: int = 200, user: str = ""
) -> web.Response:
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "login.html",
        status=status,
        title="Log in",
        bare=True,
        csrf=token,
        message=message,
        username=user,
        next=_safe_next(request.query.get("next")),
    )
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, **cookie_options(request))
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    """`GET /console/login`."""
    if AUTH not in request.app:
        raise web.HTTPSeeOther(HOME)
    return _login_form(request)


async def login(request: web.Request) -> web.StreamResponse:
    """`POST /console/login`: check the CSRF token and the password, start a session."""
    service = request.app.get(AUTH)
    if service is None:
        raise web.HTTPSeeOther(HOME)
    form = await request.post()
    fields = {k: str(form.get(k, ""))[:MAX_FIELD] for k in ("username", "password", "csrf", "next")}
    if not same_origin(request) or not csrf_matches(
        request.cookies.get(LOGIN_CSRF_COOKIE), fields["csrf"]
    ):
        return _login_form(
            request, status=403, message="The form expired or came from another site: try again."
        )
    user = fields["username"].strip()
    try:
        account = await service.login(user, fields["password"], request.remote or "unknown")
    except ANSWERABLE as exc:
        return _login_form(request, status=status_for(exc), message=exc.message, user=user)
    if account.kind != "user":
        return _login_form(
            request, status=403, message="Robots log in with tokens, not to the console.", user=user
        )
    if not service.permissions.can_view(account.identity()):
        return _login_form(
            request,
            status=403,
            message=f"{user} may not use the console: it needs an administrator or a viewer.",
            user=user,
        )
    token, _ = request.app[SESSIONS].create(account.name, account.credential)
    response = web.HTTPSeeOther(_safe_next(fields["next"]))
    response.set_cookie(SESSION_COOKIE, token, **cookie_options(request))
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    """`POST /console/logout`: end the session (the form carries its CSRF token)."""
    store = request.app.get(SESSIONS)
    session = request.get(SESSION_KEY)
    if store is None:
        raise web.HTTPSeeOther(HOME)
    form = await request.post()
    if not isinstance(session, Session) or not same_origin(request):
        raise web.HTTPSeeOther("/console/login")
    if not csrf_matches(session.csrf, str(form.get("csrf", ""))):
        return render(request, "error.html", status=403, title="Refused", message="Bad CSRF token.")
    store.end(request.cookies.get(SESSION_COOKIE, ""))
    response = web.HTTPSeeOther("/console/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response
