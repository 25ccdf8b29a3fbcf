"""The `auth:` section of the configuration, with its defaults, as typed values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.config import Config
from registry.preflight import is_loopback
from shared.durations import parse_duration

#: Where generated or default auth files live, under the data directory.
AUTH_DIR = "auth"


@dataclass(frozen=True)
class AuthSettings:
    """Everything authentication and authorization need from the configuration."""

    service: str
    issuer: str
    #: The token endpoint named in challenges: `auth.realm`, else `public_url` + `/token`, else
    #: None (then built per request, see `registry.auth.middleware.realm_of`).
    realm: str | None
    users_file: Path
    signing_key: Path
    signing_key_configured: bool
    token_ttl: float
    clock_skew: float
    rate_window: float
    max_failures_per_user: int
    max_failures_per_source: int
    metrics_access: str
    permissions: list[dict[str, Any]]
    #: Whether the server listens on loopback only: then (and only then) a realm may be built
    #: from the request's Host header, since every client is on this machine.
    loopback_only: bool = True

    @classmethod
    def from_config(cls, config: Config) -> AuthSettings:
        """Read `config.raw["auth"]` (already checked against the schema)."""
        section: dict[str, Any] = config.raw.get("auth") or {}
        token = section.get("token", {})
        limits = section.get("rate_limit", {})
        auth_dir = config.data_dir / AUTH_DIR
        key = token.get("signing_key")
        return cls(
            service=section.get("service", "trustyard"),
            issuer=section.get("issuer", "trustyard"),
            realm=section.get("realm")
            or (f"{config.public_url}/token" if config.public_url else None),
            users_file=Path(section.get("users_file") or auth_dir / "users.yaml"),
            signing_key=Path(key) if key else auth_dir / "token-signing-key.pem",
            signing_key_configured=bool(key),
            token_ttl=parse_duration(token.get("ttl", "5m")),
            clock_skew=parse_duration(token.get("clock_skew", "60s")),
            rate_window=parse_duration(limits.get("window", "5m")),
            max_failures_per_user=int(limits.get("max_failures_per_user", 10)),
            max_failures_per_source=int(limits.get("max_failures_per_source", 30)),
            metrics_access=section.get("metrics", "admin"),
            permissions=list(section.get("permissions", [])),
            loopback_only=is_loopback(config.host),
        )
