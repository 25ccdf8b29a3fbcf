"""`/token`: the Docker registry token endpoint.

- `GET /token?service=…&scope=…` with optional `Basic` credentials (a user's password or a
  robot's token), as docker, podman and skopeo ask; no credentials asks for anonymous access.
- `POST /token` with the OAuth2 form (`grant_type=password`, `username`, `password`, `scope`
  separated by spaces, `service`, `client_id`), as containerd and newer clients ask.

The granted scopes are the intersection of those asked for and those the caller's permissions
allow; asking for more is not an error (the token just carries less). Refresh tokens are not
issued, so clients keep sending their credentials here.
"""

from __future__ import annotations

import datetime
from typing import Any

from aiohttp import hdrs, web

from policies.errors import PolicyDenied
from registry.auth.scopes import ScopeError, intersect, parse_scopes
from registry.auth.service import AUTH, AuthService, parse_basic
from registry.auth.users import Account
from registry.errors import ANSWERABLE, spec_error, status_of
from registry.expect import expect_continue
from registry.identity import ANONYMOUS
from storage.errors import StorageError
from storage.oci.errors import OciError


async def get_token(request: web.Request) -> web.StreamResponse:
    """`GET /token`."""
    service = request.app[AUTH]
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    account: Account | None = None
    try:
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "basic":
                return _error(400, "invalid_request", "only Basic credentials are accepted here")
            user, secret = parse_basic(value)
            account = await _login(request, service, user, secret)
    except ANSWERABLE as exc:
        return _failure(exc)
    scopes = request.query.getall("scope", [])
    return _grant(service, account, scopes, request.query.get("service"), oauth=False)


async def post_token(request: web.Request) -> web.StreamResponse:
    """`POST /token` (OAuth2 password grant)."""
    service = request.app[AUTH]
    form = await request.post()
    grant_type = str(form.get("grant_type", ""))
    if grant_type != "password":
        return _error(400, "unsupported_grant_type", "only grant_type=password is supported")
    user = str(form.get("username", ""))
    if not user or "password" not in form:
        return _error(400, "invalid_request", "username and password are required")
    try:
        account = await _login(request, service, user, str(form["password"]))
    except ANSWERABLE as exc:
        return _failure(exc)
    scopes = [str(s) for s in form.getall("scope", [])]
    asked_service = str(form["service"]) if "service" in form else None
    return _grant(service, account, scopes, asked_service, oauth=True)


async def _login(request: web.Request, service: AuthService, user: str, secret: str) -> Account:
    return await service.login(user, secret, request.remote or "unknown")


def _grant(
    service: AuthService,
    account: Account | None,
    scopes: list[str],
    asked_service: str | None,
    *,
    oauth: bool,
) -> web.StreamResponse:
    """Sign a token for `account` (None: anonymous) granting what was asked, cut down to what
    is allowed, bound to the account's current credential."""
    who = ANONYMOUS if account is None else account.identity()
    if asked_service is not None and asked_service != service.settings.service:
        return _error(400, "invalid_request", f"unknown service {asked_service[:100]!r}")
    try:
        requested = parse_scopes(scopes)
    except ScopeError as exc:
        return _error(400, "invalid_scope", str(exc))
    granted = intersect(requested, lambda kind, name: service.allowed(who, kind, name))
    subject = "" if who.is_anonymous else who.name
    credential = "" if account is None else account.credential
    issued = service.tokens.issue(subject, granted, credential=credential)
    body: dict[str, Any] = {
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": datetime.datetime.fromtimestamp(issued.issued_at, datetime.UTC).isoformat(),
    }
    if oauth:
        body["scope"] = " ".join(str(scope) for scope in granted)
    return web.json_response(body, headers={hdrs.CACHE_CONTROL: "no-store"})


def _failure(exc: OciError | StorageError | PolicyDenied) -> web.StreamResponse:
    error = spec_error(exc).error
    status = status_of(error)
    response = _error(status, _oauth_error(status), exc.message, code=error.code)
    response.headers.update(getattr(exc, "headers", {}))
    return response


def _oauth_error(status: int) -> str:
    """The OAuth2 `error` for a refusal of `status`: only a 429 tells the client to wait, and a
    failure of ours (5xx) is not blamed on the client's credentials."""
    if status == 401:
        return "invalid_grant"
    if status == 429:
        return "too_many_requests"
    if status == 503:
        return "temporarily_unavailable"
    if status >= 500:
        return "server_error"
    return "invalid_request"


def _error(
    status: int, oauth_error: str, message: str, *, code: str = "UNAUTHORIZED"
) -> web.Response:
    """An error both docker (the `errors` list) and OAuth2 clients (`error`) can read."""
    return web.json_response(
        {
            "errors": [{"code": code, "message": message}],
            "error": oauth_error,
            "error_description": message,
        },
        status=status,
        headers={hdrs.CACHE_CONTROL: "no-store"},
    )


def add_token_routes(app: web.Application) -> None:
    """Mount `/token` on `app`."""
    app.router.add_get("/token", get_token, expect_handler=expect_continue)
    app.router.add_post("/token", post_token, expect_handler=expect_continue)
