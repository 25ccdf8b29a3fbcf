"""The authentication service one application holds: accounts, tokens, permissions, limits.

`authenticate(request)` turns the `Authorization` header into a `Caller`: anonymous (no header),
a bearer token's subject with the scopes the token grants, or a user or robot that sent its
credentials directly (`Basic`), who then has whatever its permissions give. Logins go through
`login`, which enforces the failed-login limits and never logs a secret.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from base64 import b64decode
from dataclasses import dataclass

from aiohttp import hdrs, web

from registry.auth.permissions import MAX_REMEMBERED, Permissions
from registry.auth.ratelimit import FailedLogins
from registry.auth.scopes import CATALOG, Scope
from registry.auth.settings import AuthSettings
from registry.auth.tokens import InvalidToken, TokenAuthority, load_or_create_key
from registry.auth.users import Account, UsersFileError, UserStore
from registry.config import Config
from registry.errors import RegistryError
from registry.identity import ANONYMOUS, Identity
from storage.oci.errors import TOOMANYREQUESTS, UNAUTHORIZED, UNAVAILABLE

log = logging.getLogger(__name__)

#: Why a token or session of an account whose password or robot token changed since is refused.
CREDENTIAL_CHANGED = (
    "the token was issued before its holder's password or robot token changed: log in again"
)

#: What a client is told while the users file cannot be read (the log says which file and why:
#: a client needs no path on the server).
USERS_UNREADABLE = "the registry cannot read its users file: try again later"


@dataclass(frozen=True)
class Caller:
    """Who sent a request, and how they proved it."""

    identity: Identity
    #: The scopes a bearer token grants; None when no token was used (anonymous or Basic).
    token_access: tuple[Scope, ...] | None = None


class AuthService:
    """Accounts, token authority, permissions and failed-login limits of one registry."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.users = UserStore(settings.users_file)
        self.permissions = Permissions.from_config(settings.permissions)
        # A pure function of the caller's current identity and the fixed rules (see
        # `registry.auth.permissions`): derived once per (identity, resource), bounded.
        self._allowed = functools.lru_cache(maxsize=MAX_REMEMBERED)(self._derive_allowed)
        self.tokens = TokenAuthority(
            load_or_create_key(settings.signing_key, configured=settings.signing_key_configured),
            issuer=settings.issuer,
            service=settings.service,
            ttl=settings.token_ttl,
            clock_skew=settings.clock_skew,
        )
        self.failed_logins = FailedLogins(
            window=settings.rate_window,
            max_per_user=settings.max_failures_per_user,
            max_per_source=settings.max_failures_per_source,
        )

    @classmethod
    def from_config(cls, config: Config) -> AuthService:
        """The service for `config` (its `auth` section must be present)."""
        return cls(AuthSettings.from_config(config))

    def allowed(self, who: Identity, resource_type: str, name: str) -> frozenset[str]:
        """Every action `who` may take on a resource (what a token for them may carry)."""
        return self._allowed(who, resource_type, name)

    def _derive_allowed(self, who: Identity, resource_type: str, name: str) -> frozenset[str]:
        if resource_type == "repository":
            return self.permissions.actions(who, name) - {"admin"}
        # The catalog lists only what the caller may pull: anyone who may pull something may
        # ask for it (anonymous callers when some namespace grants them pull).
        if (
            resource_type == "registry"
            and name == CATALOG
            and (not who.is_anonymous or self.permissions.anonymous_pull_anywhere)
        ):
            return frozenset({"*"})
        return frozenset()

    async def authenticate(self, request: web.Request) -> Caller:
        """The caller of `request`; raises 401 for bad credentials, 429 while locked out."""
        header = request.headers.get(hdrs.AUTHORIZATION, "")
        if not header:
            return Caller(ANONYMOUS)
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return self.bearer(value.strip())
        if scheme.lower() == "basic":
            user, secret = parse_basic(value)
            account = await self.login(user, secret, request.remote or "unknown")
            return Caller(account.identity())
        raise RegistryError(UNAUTHORIZED, message="unsupported authorization scheme")

    def account(self, name: str) -> Account | None:
        """The account called `name` as the users file says now; 503 while the file cannot be
        read (a half-written edit by hand, a file made unreadable): refused, never a guess."""
        try:
            return self.users.get(name)
        except UsersFileError as exc:
            raise _unreadable(exc) from None

    def _verify(self, name: str, secret: str) -> Account | None:
        try:
            return self.users.verify(name, secret)
        except UsersFileError as exc:
            raise _unreadable(exc) from None

    def bearer(self, token: str) -> Caller:
        """The caller a bearer token stands for: its subject as the users file says now, with
        the token's scopes; 401 when the token is invalid or its subject is gone."""
        try:
            claims = self.tokens.verify(token)
        except InvalidToken as exc:
            log.info("refused a bearer token: %s", exc)
            raise RegistryError(UNAUTHORIZED, message="invalid or expired token") from None
        if not claims.subject:
            return Caller(ANONYMOUS, claims.access)
        account = self.account(claims.subject)
        if account is None:  # removed since the token was issued: the token dies with it
            raise RegistryError(UNAUTHORIZED, message="invalid or expired token")
        if account.credential != claims.credential:
            # A new password, a robot created again under the same name, a hash edited by
            # hand: whoever held the old credential (or a token got with it) holds nothing now.
            log.info("refused a bearer token of %r: its credential changed", claims.subject)
            raise RegistryError(UNAUTHORIZED, message=CREDENTIAL_CHANGED)
        return Caller(account.identity(), claims.access)

    async def login(self, user: str, secret: str, source: str) -> Account:
        """The account whose password or robot token `secret` is; 401 otherwise, 429 if locked."""
        wait = self.failed_logins.retry_after(user, source)
        if wait > 0:
            log.warning("login refused while locked out: source %s", source)
            raise RegistryError(
                TOOMANYREQUESTS,
                message="too many failed logins: try again later",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        account = await asyncio.to_thread(self._verify, user, secret)
        if account is None:
            self.failed_logins.record_failure(user, source)
            # The user name is logged only when it is a known account: a password typed into
            # the user field must not end up in the log.
            known = self.account(user) is not None
            log.warning(
                "failed login for %s from %s", repr(user) if known else "an unknown user", source
            )
            raise RegistryError(UNAUTHORIZED, message="incorrect username or password")
        self.failed_logins.record_success(user)
        return account


def _unreadable(exc: UsersFileError) -> RegistryError:
    log.error("refused a request: %s", exc)
    return RegistryError(UNAVAILABLE, message=USERS_UNREADABLE)


def parse_basic(value: str) -> tuple[str, str]:
    """User and secret of a `Basic` credential; 401 when it does not decode."""
    try:
        decoded = b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, or non-ASCII characters
        raise RegistryError(UNAUTHORIZED, message="malformed basic credentials") from None
    user, sep, secret = decoded.partition(":")
    if not sep or not user:
        raise RegistryError(UNAUTHORIZED, message="malformed basic credentials")
    return user, secret


AUTH = web.AppKey("auth", AuthService)
#: Request key holding the `Caller` once the auth middleware ran.
CALLER_KEY = "trustyard_caller"
