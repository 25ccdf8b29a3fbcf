"""The `events:` section of the configuration: endpoints, retries, pull events."""

from __future__ import annotations

from dataclasses import dataclass, field

from registry.config import Config
from registry.events.cloudevents import KINDS
from shared.durations import parse_duration
from shared.globs import GlobSet


@dataclass(frozen=True)
class Endpoint:
    """Where events go: a URL, which kinds, extra headers, an HMAC secret, a timeout."""

    name: str
    url: str
    kinds: frozenset[str] = frozenset(KINDS)
    headers: dict[str, str] = field(default_factory=dict)
    secret: str | None = None
    timeout: float = 5.0

    def wants(self, kind: str) -> bool:
        """Whether this endpoint receives events of `kind`."""
        return kind in self.kinds


@dataclass(frozen=True)
class EventSettings:
    """The effective events configuration."""

    source: str
    endpoints: tuple[Endpoint, ...] = ()
    retry_initial: float = 1.0
    retry_max: float = 300.0
    give_up_after: float = 86400.0
    pull_mode: str = "aggregated"  # sampled | aggregated | off
    pull_rate: float = 0.01
    pull_interval: float = 60.0
    library: GlobSet | None = None  # deprecated `library_repositories` (see EventHub.is_library)

    @classmethod
    def from_config(cls, config: Config) -> EventSettings:
        """The settings of `config.raw["events"]` (defaults when absent)."""
        section = config.raw.get("events") or {}
        endpoints = tuple(
            Endpoint(
                name=entry["name"],
                url=entry["url"],
                kinds=(
                    frozenset(KINDS)
                    if "*" in entry.get("events", ["*"])
                    else frozenset(entry["events"])
                ),
                headers=dict(entry.get("headers") or {}),
                secret=entry.get("secret"),
                timeout=parse_duration(entry.get("timeout", "5s")),
            )
            for entry in section.get("endpoints") or ()
        )
        retry = section.get("retry") or {}
        pulls = section.get("pull_events") or {}
        library = section.get("library_repositories")
        return cls(
            source=section.get("source") or f"/trustyard/{config.host}:{config.port}",
            endpoints=endpoints,
            retry_initial=parse_duration(retry.get("initial", "1s")),
            retry_max=parse_duration(retry.get("max", "5m")),
            give_up_after=parse_duration(retry.get("give_up_after", "24h")),
            pull_mode=pulls.get("mode", "aggregated"),
            pull_rate=float(pulls.get("rate", 0.01)),
            pull_interval=parse_duration(pulls.get("interval", "60s")),
            library=GlobSet.of(library) if library else None,
        )

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after `attempts` failed tries: doubling from `initial`, capped."""
        return min(self.retry_initial * 2 ** max(attempts - 1, 0), self.retry_max)
