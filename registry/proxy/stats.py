"""The proxy's counters, shown in `/metrics` (`trustyard_proxy_*`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Protocol

#: What each event counter means, for the `# HELP` line.
EVENTS = {
    "manifest_hit": "a manifest served from the cache without asking upstream",
    "manifest_revalidated": "a cached tag confirmed upstream with a HEAD",
    "manifest_fetched": "a manifest fetched and stored",
    "stale_served": "a cached manifest served stale because the upstream failed",
    "stale_refused": "a request refused: upstream failed and no copy inside the stale window",
    "blob_fetched": "a blob fetched, verified and stored",
    "blob_fetch_failed": "a blob fetch that failed (nothing stored)",
    "joiner_waited": "a client joining a fetch (S3) past the end of its local copy (which a full "
    "local disk stopped), served once the blob was stored",
    "digest_mismatch": "content from upstream whose digest was not the one asked for",
    "evicted": "an image evicted from the cache (least recently pulled first)",
    "companions_refreshed": "a cached image's signatures and referrers checked upstream again",
    "companions_gained": "a signature, attestation or referrer found upstream for a cached image",
    "tags_listed": "a tag list answered from the upstream's",
    "tags_cached_served": "a tag list answered from the cache because the upstream failed",
}


class UpstreamCounters(Protocol):
    """What an upstream's client counts (`registry.proxy.client.UpstreamClient`)."""

    requests: int
    rate_limited: int
    held_back: int
    connects_waited_out: int

    def backoff_left(self) -> float:
        """Seconds before the upstream may be asked again."""
        ...


class ProxyStats:
    """Counters by event and upstream requests by upstream."""

    def __init__(self) -> None:
        self.events: dict[str, int] = defaultdict(int)
        self.bytes_fetched = 0
        self.bytes_evicted = 0

    def count(self, event: str) -> None:
        """Count one `event` (a key of `EVENTS`)."""
        self.events[event] += 1

    def count_bytes(self, size: int) -> None:
        """Count blob bytes fetched from upstreams."""
        self.bytes_fetched += size

    def count_evicted_bytes(self, size: int) -> None:
        """Count blob bytes eviction freed."""
        self.bytes_evicted += size

    def render(self, upstreams: Mapping[str, UpstreamCounters]) -> str:
        """The counters in the Prometheus text format."""
        lines = [
            "# HELP trustyard_proxy_events_total Proxy cache events: "
            + "; ".join(f"{k}: {v}" for k, v in EVENTS.items()),
            "# TYPE trustyard_proxy_events_total counter",
        ]
        for event in EVENTS:
            lines.append(f'trustyard_proxy_events_total{{event="{event}"}} {self.events[event]}')
        lines += [
            "# HELP trustyard_proxy_upstream_requests_total Requests sent to each upstream.",
            "# TYPE trustyard_proxy_upstream_requests_total counter",
        ]
        for name, client in sorted(upstreams.items()):
            lines.append(
                f'trustyard_proxy_upstream_requests_total{{upstream="{name}"}} {client.requests}'
            )
        per_upstream = (
            ("rate_limited_total", "counter", "429 answers from each upstream.", "rate_limited"),
            (
                "held_back_total",
                "counter",
                "Requests not sent to an upstream while it asked for a pause (429).",
                "held_back",
            ),
            (
                "connects_waited_out_total",
                "counter",
                "Connect deadlines to an upstream passed while this process was held up (a "
                "garbage collection, a busy machine), not counted against the upstream.",
                "connects_waited_out",
            ),
        )
        for metric, kind, text, attribute in per_upstream:
            lines += [
                f"# HELP trustyard_proxy_upstream_{metric} {text}",
                f"# TYPE trustyard_proxy_upstream_{metric} {kind}",
            ]
            for name, client in sorted(upstreams.items()):
                value = getattr(client, attribute)
                lines.append(f'trustyard_proxy_upstream_{metric}{{upstream="{name}"}} {value}')
        lines += [
            "# HELP trustyard_proxy_upstream_backoff_seconds Seconds before an upstream that "
            "answered 429 is asked again.",
            "# TYPE trustyard_proxy_upstream_backoff_seconds gauge",
        ]
        for name, client in sorted(upstreams.items()):
            left = round(client.backoff_left(), 3)
            lines.append(f'trustyard_proxy_upstream_backoff_seconds{{upstream="{name}"}} {left}')
        lines += [
            "# HELP trustyard_proxy_blob_bytes_fetched_total Blob bytes fetched from upstreams.",
            "# TYPE trustyard_proxy_blob_bytes_fetched_total counter",
            f"trustyard_proxy_blob_bytes_fetched_total {self.bytes_fetched}",
            "# HELP trustyard_proxy_evicted_bytes_total Blob bytes freed by cache eviction.",
            "# TYPE trustyard_proxy_evicted_bytes_total counter",
            f"trustyard_proxy_evicted_bytes_total {self.bytes_evicted}",
        ]
        return "\n".join(lines) + "\n"
