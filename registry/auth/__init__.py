"""Authentication and authorization: who the caller is, and what they may do.

`setup_auth(app, config)` turns it on when the configuration has an `auth` section; without one
the registry stays open. The modules: `scopes` (token scopes, parse and intersect), `tokens`
(ES256 JWTs), `token_cache` (tokens verified once, until they expire), `users` (the users
file), `permissions` (roles per namespace glob), `ratelimit`
(failed logins), `service` (authenticating a request), `middleware` (where it sits on the
request path), `token_endpoint` (`/token`).
"""

from __future__ import annotations

from aiohttp import web

from registry.auth.service import AUTH, AuthService
from registry.auth.token_endpoint import add_token_routes
from registry.config import Config


def setup_auth(app: web.Application, config: Config) -> None:
    """Enable authentication on `app` when `config` has an (enabled) `auth` section."""
    if not config.auth_enabled:
        return
    app[AUTH] = AuthService.from_config(config)
    add_token_routes(app)
