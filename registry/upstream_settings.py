"""The proxy's configuration (`registry.proxy`): the `upstreams` list and the `proxy` section,
checked as a whole.

The JSON schema checks each key's shape; this module checks what spans keys and the world
outside the file: names and prefixes unique, no prefix inside another, the default upstream
named, exactly one source for a password and that source readable, the CA file a PEM file.
Every problem is named with the upstream it belongs to.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from policies.rules import parse_size
from policies.signatures.references import UpstreamIdentity
from shared.globs import GlobSet

#: Defaults of the `proxy` section.
DEFAULT_MANIFEST_TTL = 300.0
DEFAULT_STALE_IF_ERROR = 86400.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_EVICT_INTERVAL = 300.0

#: Hosts that serve Docker Hub, where a one-segment name means `library/<name>`.
DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "index.docker.io", "docker.io"})


class ProxyConfigError(ValueError):
    """The proxy's settings are inconsistent; the message names each problem."""


@dataclass(frozen=True)
class Upstream:
    """One proxied registry."""

    name: str
    url: str  # scheme://host[:port], no trailing slash
    prefix: str
    username: str | None
    password: str | None = field(repr=False)  # never in a log line
    ca_file: Path | None
    connect_timeout: float
    read_timeout: float

    @property
    def host(self) -> str:
        """The upstream's host[:port], as image references name it."""
        return urlsplit(self.url).netloc

    @property
    def is_docker_hub(self) -> bool:
        """Whether one-segment names mean `library/<name>` (Docker Hub's convention)."""
        return urlsplit(self.url).hostname in DOCKER_HUB_HOSTS

    def identity(self) -> UpstreamIdentity:
        """How signatures name images of this upstream (its host, and Docker Hub's aliases)."""
        hosts = DOCKER_HUB_HOSTS if self.is_docker_hub else frozenset({self.host})
        return UpstreamIdentity(self.prefix, hosts, self.is_docker_hub)

    def remote_name(self, path: str) -> str:
        """The upstream's repository name for `path` (the name after the prefix)."""
        if self.is_docker_hub and "/" not in path:
            return f"library/{path}"
        return path

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context trusting only `ca_file`, or None for the system's trust store."""
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file))


@dataclass(frozen=True)
class ProxySettings:
    """Every upstream and how proxied content is cached."""

    upstreams: tuple[Upstream, ...]
    default_upstream: Upstream | None
    local_namespaces: GlobSet
    manifest_ttl: float
    stale_if_error: float
    cache_limit: int | None = None  # bytes of proxied content kept; None: no limit
    evict_interval: float = DEFAULT_EVICT_INTERVAL

    def route(self, name: str) -> tuple[Upstream, str] | None:
        """The upstream serving repository `name` and the path after its prefix, or None when
        the name is local. Decided by configuration alone, never by what is stored, so that a
        push cannot shadow an upstream image."""
        for upstream in self.upstreams:
            if name.startswith(upstream.prefix + "/"):
                return upstream, name[len(upstream.prefix) + 1 :]
        if self.default_upstream is not None and not self.local_namespaces.matches(name):
            return self.default_upstream, name
        return None


def load_proxy_settings(
    document: Mapping[str, Any], environ: Mapping[str, str], parse_duration: Any
) -> ProxySettings | None:
    """The proxy settings of a merged configuration `document`, or None when it names no
    upstream; ProxyConfigError lists every problem found."""

    items = document.get("upstreams") or []
    section = document.get("proxy") or {}
    problems: list[str] = []
    upstreams: list[Upstream] = []
    for index, item in enumerate(items):
        where = f"upstreams[{index}] ({item['name']})"
        password, problem = _password(item, environ)
        if problem:
            problems.append(f"{where}: {problem}")
        if password is not None and "username" not in item:
            problems.append(f"{where}: a password needs a username")
        if "username" in item and password is None and not problem:
            problems.append(f"{where}: username without password, password_file or password_env")
        ca_file = Path(item["ca_file"]) if "ca_file" in item else None
        if ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                problems.append(f"{where}: ca_file {ca_file}: not a readable PEM file ({exc})")
        upstreams.append(
            Upstream(
                name=item["name"],
                url=item["url"].rstrip("/"),
                prefix=item["prefix"],
                username=item.get("username"),
                password=password,
                ca_file=ca_file,
                connect_timeout=parse_duration(
                    item.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
                ),
                read_timeout=parse_duration(item.get("read_timeout", DEFAULT_READ_TIMEOUT)),
            )
        )
    problems += _overlaps(upstreams)
    by_name = {u.name: u for u in upstreams}
    default = None
    if "default_upstream" in section:
        default = by_name.get(section["default_upstream"])
        if default is None:
            known = ", ".join(by_name) or "none is configured"
            problems.append(
                f"proxy.default_upstream: no upstream named {section['default_upstream']!r} "
                f"(upstreams: {known})"
            )
    if section and not upstreams:
        problems.append("proxy: set, but no upstreams are configured")
    if problems:
        raise ProxyConfigError("\n  ".join(problems))
    if not upstreams:
        return None
    return ProxySettings(
        upstreams=tuple(upstreams),
        default_upstream=default,
        local_namespaces=GlobSet.of(section.get("local_namespaces", ())),
        manifest_ttl=parse_duration(section.get("manifest_ttl", DEFAULT_MANIFEST_TTL)),
        stale_if_error=parse_duration(section.get("stale_if_error", DEFAULT_STALE_IF_ERROR)),
        cache_limit=parse_size(section["cache_limit"]) if "cache_limit" in section else None,
        evict_interval=parse_duration(section.get("evict_interval", DEFAULT_EVICT_INTERVAL)),
    )


def _password(item: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The upstream's password from exactly one source, or a problem in words."""
    sources = [key for key in ("password", "password_file", "password_env") if key in item]
    if len(sources) > 1:
        return None, f"give one of {', '.join(sources)}, not several"
    if not sources:
        return None, ""
    if sources[0] == "password":
        return str(item["password"]), ""
    if sources[0] == "password_env":
        value = environ.get(item["password_env"])
        if not value:
            return None, f"password_env: the variable {item['password_env']} is not set"
        return value, ""
    path = Path(item["password_file"])
    try:
        value = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"password_file {path}: cannot read ({exc})"
    if not value:
        return None, f"password_file {path}: empty"
    return value, ""


def _overlaps(upstreams: list[Upstream]) -> list[str]:
    """Problems with duplicate names and prefixes, or a prefix inside another one."""
    problems = []
    for i, first in enumerate(upstreams):
        for second in upstreams[i + 1 :]:
            if first.name == second.name:
                problems.append(f"upstreams: the name {first.name!r} is used twice")
            if first.prefix == second.prefix:
                problems.append(
                    f"upstreams: {first.name} and {second.name} share the prefix {first.prefix!r}"
                )
            elif second.prefix.startswith(first.prefix + "/") or first.prefix.startswith(
                second.prefix + "/"
            ):
                problems.append(
                    f"upstreams: the prefixes of {first.name} ({first.prefix}) and "
                    f"{second.name} ({second.prefix}) overlap: one is inside the other"
                )
    return problems
