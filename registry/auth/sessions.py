"""Console sessions: a browser logs in once with a user's password and then holds a cookie.

The cookie (`trustyard_session`) is 256 random bits, `HttpOnly`, `SameSite=Strict`, `Path=/`,
and `Secure` when the registry serves TLS; the server keeps only its SHA-256 (a leaked memory
dump or log line names no live session). Sessions live in memory: a restart logs everyone out,
which is the safe direction. A session ends after `IDLE` without use, `LIFETIME` after login, at
logout, or as soon as its user leaves the users file or its password changes.

What a session cookie authenticates is deliberately narrow, so a forged cross-site request can do
nothing with it: only safe methods (`GET`, `HEAD`) under the console and the management API, and
the console's own logout `POST`, which the console checks against the session's CSRF token.
Everything that changes the registry (`/v2/` pushes and deletes, the scanner webhook) ignores the
cookie and needs its usual credentials.

Login is CSRF-protected too (so nobody can log a victim into the attacker's account): the login
form carries a random token that must equal a `trustyard_login_csrf` cookie (double submit), and a
cross-origin `Origin` header is refused outright.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import hdrs, web

from registry.auth.service import AUTH, AuthService, Caller

SESSION_COOKIE = "trustyard_session"
LOGIN_CSRF_COOKIE = "trustyard_login_csrf"
#: A session unused this long ends.
IDLE = 60 * 60.0
#: A session ends this long after login, however busy.
LIFETIME = 12 * 60 * 60.0
#: Sessions kept at most; the least recently used goes first (bounded memory under a login flood).
MAX_SESSIONS = 10_000
#: Path prefixes where a session cookie authenticates safe methods.
SESSION_PREFIXES = ("/console/", "/api/v1/")
#: The one unsafe request a session cookie authenticates (its handler checks the CSRF token).
LOGOUT_PATH = "/console/logout"
SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass
class Session:
    """One logged-in browser."""

    account: str
    #: The account's credential generation at login (`Account.credential`): a new password
    #: ends the session.
    credential: str
    csrf: str
    created: float
    last_used: float


class SessionStore:
    """Live sessions by the SHA-256 of their cookie value."""

    def __init__(self, *, idle: float = IDLE, lifetime: float = LIFETIME) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, account: str, credential: str) -> tuple[str, Session]:
        """A new session for `account`, whose credential generation is `credential`: (the cookie
        value, the session)."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(account, credential, secrets.token_urlsafe(32), now, now)
        self._sessions[_key(token)] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return token, session

    def get(self, token: str) -> Session | None:
        """The live session a cookie value names (refreshing its idle timer), or None."""
        key = _key(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = time.time()
        if now - session.last_used > self.idle or now - session.created > self.lifetime:
            del self._sessions[key]
            return None
        session.last_used = now
        self._sessions.move_to_end(key)
        return session

    def end(self, token: str) -> None:
        """Log a session out."""
        self._sessions.pop(_key(token), None)


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


SESSIONS = web.AppKey("sessions", SessionStore)
#: Request key holding the `Session` a cookie authenticated.
SESSION_KEY = "trustyard_session"


def setup_sessions(app: web.Application) -> None:
    """Keep console sessions when authentication is on."""
    if AUTH in app:
        app[SESSIONS] = SessionStore()


def session_caller(request: web.Request, service: AuthService) -> Caller | None:
    """The caller a session cookie authenticates for this request, or None (then the request's
    `Authorization` header, or nothing, decides)."""
    # The header is looked at first: the registry's hot path (a client with a token, no cookie)
    # then never parses cookies.
    if request.headers.get(hdrs.AUTHORIZATION) or hdrs.COOKIE not in request.headers:
        return None
    store = request.app.get(SESSIONS)
    token = request.cookies.get(SESSION_COOKIE)
    if store is None or not token:
        return None
    safe = request.method in SAFE_METHODS and request.path.startswith(SESSION_PREFIXES)
    if not safe and not (request.method == "POST" and request.path == LOGOUT_PATH):
        return None
    session = store.get(token)
    if session is None:
        return None
    account = service.account(session.account)
    if (
        account is None
        or account.kind != "user"
        or not hmac.compare_digest(account.credential, session.credential)
    ):
        # Removed, or its password changed since login: the session dies.
        store.end(token)
        return None
    request[SESSION_KEY] = session
    return Caller(account.identity())


def csrf_matches(expected: str | None, given: str | None) -> bool:
    """Whether a form's CSRF token equals the expected one (in constant time)."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


def same_origin(request: web.Request) -> bool:
    """False when the request names another origin (`Origin`, else `Referer`) than this server."""
    origin = request.headers.get(hdrs.ORIGIN) or request.headers.get(hdrs.REFERER)
    if not origin:
        return True  # browsers send Origin on POST; non-browser clients hold no cookie to abuse
    ours = f"{request.scheme}://{request.host}"
    return origin == ours or origin.startswith(ours + "/")


def cookie_options(request: web.Request) -> dict[str, object]:
    """The attributes of every cookie the console sets."""
    return {"httponly": True, "samesite": "Strict", "secure": request.secure, "path": "/"}
