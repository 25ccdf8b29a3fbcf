"""The proxy's counters, shown in `/metrics` (`trustyard_proxy_*`)."""

from __future__ import annotations

from collections import defaultdict

#: What each event counter means, for the `# HELP` line.
EVENTS = {
    "manifest_hit": "a manifest served from the cache without asking upstream",
    "manifest_revalidated": "a cached tag confirmed upstream with a HEAD",
    "manifest_fetched": "a manifest fetched and stored",
    "stale_served": "a cached manifest served stale because the upstream failed",
    "stale_refused": "a request refused: upstream failed and no copy inside the stale window",
    "blob_fetched": "a blob fetched, verified and stored",
    "blob_fetch_failed": "a blob fetch that failed (nothing stored)",
    "digest_mismatch": "content from upstream whose digest was not the one asked for",
    "evicted": "an image evicted from the cache (least recently pulled first)",
}


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

    def render(self, upstream_requests: dict[str, int]) -> str:
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
        for name, count in sorted(upstream_requests.items()):
            lines.append(f'trustyard_proxy_upstream_requests_total{{upstream="{name}"}} {count}')
        lines += [
            "# HELP trustyard_proxy_blob_bytes_fetched_total Blob bytes fetched from upstreams.",
            "# TYPE trustyard_proxy_blob_bytes_fetched_total counter",
            f"trustyard_proxy_blob_bytes_fetched_total {self.bytes_fetched}",
            "# HELP trustyard_proxy_evicted_bytes_total Blob bytes freed by cache eviction.",
            "# TYPE trustyard_proxy_evicted_bytes_total counter",
            f"trustyard_proxy_evicted_bytes_total {self.bytes_evicted}",
        ]
        return "\n".join(lines) + "\n"
