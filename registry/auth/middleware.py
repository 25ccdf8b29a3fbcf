"""Where authentication and authorization sit on the request path.

`auth_middleware` authenticates every request (and sets `request[IDENTITY_KEY]`, which the
policy engine reads); the `/v2/` dispatcher then calls `authorize` once it has parsed the
repository name, so the path is parsed in one place only. With no `auth` section nothing here
runs and the registry stays open.

Answers follow the Docker registry token protocol:

- nobody authenticated, and anonymous may not do this: `401` with a `Bearer` challenge naming
  the realm, the service and the scope needed (the client fetches a token and retries);
- a token that lacks the scope though its subject would be allowed: `401` with
  `error="insufficient_scope"` (the client may fetch a wider token);
- an authenticated caller whose permissions do not allow it: `403 DENIED`, saying what was
  refused.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from registry.auth.scopes import CATALOG, covers, covers_all
from registry.auth.service import AUTH, CALLER_KEY, AuthService, Caller
from registry.auth.sessions import session_caller
from registry.context import CONTEXT
from registry.errors import RegistryError
from registry.identity import IDENTITY_KEY
from registry.metrics import ROUTE_KEY
from storage.oci.errors import DENIED, UNAUTHORIZED

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PULL = ("pull",)
PUSH = ("pull", "push")
DELETE = ("delete",)

#: The actions each route needs, by method (route names are those `registry.routes` sets).
REQUIRED_ACTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "upload_start": {"POST": PUSH},
    "upload": {"PATCH": PUSH, "PUT": PUSH, "GET": PUSH, "DELETE": PUSH},
    "blob": {"GET": PULL, "HEAD": PULL, "DELETE": DELETE},
    "manifest": {"GET": PULL, "HEAD": PULL, "PUT": PUSH, "DELETE": DELETE},
    "tags": {"GET": PULL},
    "referrers": {"GET": PULL},
}

#: Paths the middleware leaves to their handler (the token endpoint authenticates itself).
UNAUTHENTICATED_PATHS = frozenset({"/token", "/healthz", "/readyz"})
#: POSTs the middleware leaves to their handler: the scanner webhook checks the scanner's own
#: credential (a bearer token or an HMAC signature from `scanners:`), not a registry account.
SCANNER_WEBHOOK_PATHS = frozenset({"/api/v1/scans"})
#: Trustyard's own API (decision log, image status): registry administrators only (`viewer`s
#: too for GET and HEAD).
ADMIN_API_PREFIX = "/api/"


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate the request's caller; guard `/metrics` and the admin API."""
    service = request.app.get(AUTH)
    if service is None or request.path in UNAUTHENTICATED_PATHS:
        return await handler(request)
    if request.method == "POST" and request.path in SCANNER_WEBHOOK_PATHS:
        return await handler(request)
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    try:
        if header[:7].lower() == "bearer ":  # the hot path: no cookie, no coroutine
            caller = service.bearer(header[7:].strip())
        else:
            caller = session_caller(request, service) or await service.authenticate(request)
    except RegistryError as exc:
        if exc.error is UNAUTHORIZED:
            bearer = header[:7].lower() == "bearer "
            exc.headers.update(
                challenge(request, service, None, error="invalid_token" if bearer else None)
            )
        raise
    request[CALLER_KEY] = caller
    request[IDENTITY_KEY] = caller.identity
    if request.path == "/metrics":
        if service.settings.metrics_access != "anonymous":
            _require_admin(service, caller, admin=service.settings.metrics_access == "admin")
    elif request.path.startswith(ADMIN_API_PREFIX):
        _require_admin(service, caller, admin=True, view=request.method in ("GET", "HEAD"))
    return await handler(request)


def authorize(request: web.Request, name: str) -> web.Request:
    """Check the caller may do what this request does on repository `name`.

    Returns the request to serve: a cross-repository mount from a repository the caller may
    not pull becomes a plain upload (the spec's answer when a mount is not possible).
    """
    service = request.app.get(AUTH)
    if service is None:
        return request
    route = request.get(ROUTE_KEY, "")
    actions = REQUIRED_ACTIONS.get(route, {}).get(request.method, PUSH)
    _require(request, service, "repository", name, actions)
    if "push" in actions or "delete" in actions:
        _require_library_ops(request, service, name)
    source = request.query.get("from")
    if route == "upload_start" and "mount" in request.query and source is not None:
        caller = _caller(request)
        if not _permitted(service, caller, "repository", source, "pull"):
            # Pairs, not a dict: a parameter given twice stays twice, for its handler to refuse
            # (`registry.query.single`), instead of the last value silently winning.
            query = [(k, v) for k, v in request.query.items() if k not in ("mount", "from")]
            return request.clone(rel_url=request.rel_url.with_query(query))
    return request


def authorize_base(request: web.Request) -> None:
    """`GET /v2/`: any authenticated caller, or anyone holding a token (docker's login check)."""
    service = request.app.get(AUTH)
    if service is None:
        return
    caller = _caller(request)
    if caller.identity.is_anonymous and caller.token_access is None:
        raise RegistryError(UNAUTHORIZED, headers=challenge(request, service, None))


def authorize_catalog(request: web.Request) -> None:
    """`GET /v2/_catalog`: authenticated callers (`registry:catalog:*` for tokens)."""
    service = request.app.get(AUTH)
    if service is not None:
        _require(request, service, "registry", CATALOG, ("*",))


def pull_filter(request: web.Request) -> Callable[[str], bool] | None:
    """A test of which repositories the caller may pull (None when auth is off: all)."""
    service = request.app.get(AUTH)
    if service is None:
        return None
    who = _caller(request).identity
    return lambda name: service.permissions.allows(who, name, "pull")


def may_push(request: web.Request, name: str) -> bool:
    """Whether the caller may push to repository `name` (everyone, when auth is off)."""
    service = request.app.get(AUTH)
    if service is None:
        return True
    return _permitted(service, _caller(request), "repository", name, "push")


def challenge(
    request: web.Request, service: AuthService, scope: str | None, *, error: str | None = None
) -> dict[str, str]:
    """The `WWW-Authenticate` header sending a client to the token endpoint."""
    realm = realm_of(request, service)
    parts = [f'realm="{realm}"', f'service="{service.settings.service}"']
    if scope:
        parts.append(f'scope="{scope}"')
    if error:
        parts.append(f'error="{error}"')
    return {hdrs.WWW_AUTHENTICATE: "Bearer " + ",".join(parts)}


#: A Host header that may go into a challenge as it is (no quotes, commas or spaces).
_HOST = re.compile(r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


def realm_of(request: web.Request, service: AuthService) -> str:
    """The token endpoint a challenge names: from configuration (`auth.realm`, `public_url`);
    without it, from the Host header only when the server listens on loopback (every client is
    on this machine), else from the address the client connected to, which a client cannot
    forge: a `Host: evil.example` request is never told to send its password to evil.example."""
    if service.settings.realm:
        return service.settings.realm
    if service.settings.loopback_only and _HOST.fullmatch(request.host or ""):
        return f"{request.scheme}://{request.host}/token"
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host = str(sockname[0])
        host = f"[{host}]" if ":" in host else host
        return f"{request.scheme}://{host}:{sockname[1]}/token"
    return f"{request.scheme}://127.0.0.1/token"


def _caller(request: web.Request) -> Caller:
    caller = request.get(CALLER_KEY)
    return caller if isinstance(caller, Caller) else Caller(request[IDENTITY_KEY])


def _permitted(
    service: AuthService, caller: Caller, resource_type: str, name: str, action: str
) -> bool:
    allowed = service.allowed(caller.identity, resource_type, name)
    if action not in allowed and "*" not in allowed:
        return False
    return caller.token_access is None or covers(caller.token_access, resource_type, name, action)


def _require(
    request: web.Request,
    service: AuthService,
    resource_type: str,
    name: str,
    actions: tuple[str, ...],
) -> None:
    caller = _caller(request)
    allowed = service.allowed(caller.identity, resource_type, name)
    missing = [a for a in actions if a not in allowed and "*" not in allowed]
    if missing:
        scope = f"{resource_type}:{name}:{','.join(actions)}"
        if caller.identity.is_anonymous:
            raise RegistryError(UNAUTHORIZED, headers=challenge(request, service, scope))
        raise RegistryError(
            DENIED,
            {"name": name, "action": ",".join(missing)},
            message=(
                f"requested access to the resource is denied: {caller.identity.name} may not "
                f"{' or '.join(missing)} {name}"
            ),
        )
    token = caller.token_access
    if token is not None and not covers_all(token, resource_type, name, actions):
        scope = f"{resource_type}:{name}:{','.join(actions)}"
        raise RegistryError(
            UNAUTHORIZED,
            message="the token does not grant this access",
            headers=challenge(request, service, scope, error="insufficient_scope"),
        )


def _require_library_ops(request: web.Request, service: AuthService, name: str) -> None:
    """The base-image library's namespace (the policy's `library.namespace`) changes only by
    ops: callers with `admin` on the repository, whatever `push` other rules give."""
    context = request.app.get(CONTEXT)
    library = context.policy.policy.library if context is not None else None
    if library is None or not library.in_namespace(name):
        return
    if not service.permissions.allows(_caller(request).identity, name, "admin"):
        raise RegistryError(
            DENIED,
            {"name": name, "action": "push"},
            message=f"{name} is in the base-image library: only ops (admin on it) may change it",
        )


def _require_admin(
    service: AuthService, caller: Caller, *, admin: bool, view: bool = False
) -> None:
    """An authenticated caller (and with `admin`, a registry administrator, or with `view` also
    a `viewer`) or a refusal."""
    who = caller.identity
    if who.is_anonymous:
        raise RegistryError(
            UNAUTHORIZED, headers={hdrs.WWW_AUTHENTICATE: 'Basic realm="trustyard"'}
        )
    if view and service.permissions.can_view(who):
        return
    if admin and not service.permissions.is_admin(who):
        raise RegistryError(DENIED, message="for registry administrators only")
