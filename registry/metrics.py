"""Prometheus metrics: requests by route and status, policy decisions, event deliveries, GC.

Served at `GET /metrics` in the Prometheus text exposition format. Counters live in this process
only; labels are bounded: route names from `registry.routes` for `/v2/`, the route's pattern
for everything else (`/api/v1/images/{repository}/{reference}/status`), never raw paths; rule
names come from the policy file.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from aiohttp import web

from policies.decisions import Verdict
from policies.facts import PolicyRequest
from registry.context import PIPELINE, context
from registry.events.hub import EVENTS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Upper bounds (seconds) of the request-duration histogram buckets.
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, float("inf"))


class Metrics:
    """The process's counters and histograms."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.duration_buckets: dict[tuple[str, str], list[int]] = defaultdict(
            lambda: [0] * len(BUCKETS)
        )
        self.duration_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.decisions: dict[tuple[str, str, str], int] = defaultdict(int)
        self.started = time.time()
        #: More lines from other parts (the proxy's counters), each rendered on every scrape.
        self.sections: list[Callable[[], str]] = []

    def count_decision(self, verdict: Verdict, request: PolicyRequest) -> None:
        """Count one policy decision by action, outcome and the rule that decided it."""
        key = (request.action.value, verdict.outcome.value, verdict.rule or "")
        self.decisions[key] += 1

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        self.requests[(method, route, status)] += 1
        key = (method, route)
        self.duration_sum[key] += seconds
        buckets = self.duration_buckets[key]
        for position, bound in enumerate(BUCKETS):
            if seconds <= bound:
                buckets[position] += 1

    def render(
        self,
        uploads_in_progress: int,
        upload_bytes: int,
        events: dict[str, int] | None = None,
        gc: tuple[int, float] | None = None,
        observer_failures: dict[str, int] | None = None,
    ) -> str:
        """The text exposition format (`events`: outbox rows by state and failed attempts;
        `gc`: how many collections ran and when the last one ended; `observer_failures`: what
        failed after a manifest change was committed, by observer)."""
        lines = [
            "# HELP trustyard_http_requests_total Requests handled, by method, route and status.",
            "# TYPE trustyard_http_requests_total counter",
        ]
        for (method, route, status), count in sorted(self.requests.items()):
            lines.append(
                f'trustyard_http_requests_total{{method="{method}",route="{route}",'
                f'status="{status}"}} {count}'
            )
        lines += [
            "# HELP trustyard_http_request_duration_seconds Time to handle a request.",
            "# TYPE trustyard_http_request_duration_seconds histogram",
        ]
        for (method, route), buckets in sorted(self.duration_buckets.items()):
            labels = f'method="{method}",route="{route}"'
            for bound, count in zip(BUCKETS, buckets, strict=True):
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(
                    f'trustyard_http_request_duration_seconds_bucket{{{labels},le="{le}"}} {count}'
                )
            lines.append(
                f"trustyard_http_request_duration_seconds_sum{{{labels}}} "
                f"{self.duration_sum[(method, route)]:.6f}"
            )
            lines.append(f"trustyard_http_request_duration_seconds_count{{{labels}}} {buckets[-1]}")
        lines += [
            "# HELP trustyard_policy_decisions_total Policy decisions, by action, outcome and "
            "deciding rule.",
            "# TYPE trustyard_policy_decisions_total counter",
        ]
        for (action, outcome, rule), count in sorted(self.decisions.items()):
            lines.append(
                f'trustyard_policy_decisions_total{{action="{action}",outcome="{outcome}",'
                f'rule="{_label(rule)}"}} {count}'
            )
        if events is not None:
            lines += [
                "# HELP trustyard_event_deliveries Events not yet delivered: pending (to be "
                "retried) and failed (given up).",
                "# TYPE trustyard_event_deliveries gauge",
                f'trustyard_event_deliveries{{state="pending"}} {events.get("pending", 0)}',
                f'trustyard_event_deliveries{{state="failed"}} {events.get("failed", 0)}',
                "# HELP trustyard_event_delivery_failures_total Failed delivery attempts.",
                "# TYPE trustyard_event_delivery_failures_total counter",
                f"trustyard_event_delivery_failures_total {events.get('failed_attempts', 0)}",
            ]
        if observer_failures is not None:
            lines += [
                "# HELP trustyard_pipeline_observer_failures_total Failures after a manifest "
                "push or delete was stored (logged; the change stays stored), by observer.",
                "# TYPE trustyard_pipeline_observer_failures_total counter",
            ]
            for observer, count in sorted(observer_failures.items()):
                lines.append(
                    f'trustyard_pipeline_observer_failures_total{{observer="{_label(observer)}"}} '
                    f"{count}"
                )
        if gc is not None:
            lines += [
                "# HELP trustyard_gc_runs_total Garbage collections run on this registry.",
                "# TYPE trustyard_gc_runs_total counter",
                f"trustyard_gc_runs_total {gc[0]}",
                "# HELP trustyard_gc_last_run_timestamp_seconds When the last collection ended.",
                "# TYPE trustyard_gc_last_run_timestamp_seconds gauge",
                f"trustyard_gc_last_run_timestamp_seconds {gc[1]:.3f}",
            ]
        lines += [
            "# HELP trustyard_blob_bytes_received_total Blob bytes accepted in uploads.",
            "# TYPE trustyard_blob_bytes_received_total counter",
            f"trustyard_blob_bytes_received_total {upload_bytes}",
            "# HELP trustyard_uploads_in_progress Upload sessions this process holds in memory.",
            "# TYPE trustyard_uploads_in_progress gauge",
            f"trustyard_uploads_in_progress {uploads_in_progress}",
            "# HELP trustyard_start_time_seconds When this process started.",
            "# TYPE trustyard_start_time_seconds gauge",
            f"trustyard_start_time_seconds {self.started:.3f}",
        ]
        return "\n".join(lines) + "\n"


METRICS = web.AppKey("metrics", Metrics)

#: The request attribute the router sets to name the route for metrics.
ROUTE_KEY = "trustyard_route"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every request and count it under its route name."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = request.get(ROUTE_KEY) or route_name(request)
        request.app[METRICS].observe(request.method, route, status, time.perf_counter() - started)


def route_name(request: web.Request) -> str:
    """A bounded name for a request outside `/v2/`: its route's pattern, or `other`."""
    route = request.match_info.route
    resource = getattr(route, "resource", None)
    canonical = getattr(resource, "canonical", None) if resource is not None else None
    if not canonical or canonical.startswith("/v2"):
        return "other"
    return str(canonical)


def _label(value: str) -> str:
    """A Prometheus label value, escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def metrics_endpoint(request: web.Request) -> web.StreamResponse:
    """`GET /metrics`."""
    registry = context(request)
    uploads = registry.uploads
    hub = request.app.get(EVENTS)
    events = None
    if hub is not None:
        events = {**await hub.outbox.counts(), "failed_attempts": hub.outbox.failed_attempts}
    text = request.app[METRICS].render(
        uploads.in_progress,
        uploads.bytes_received,
        events=events,
        gc=await registry.db.gc_run_totals(),
        observer_failures=request.app[PIPELINE].failures if PIPELINE in request.app else None,
    )
    text += "".join(section() for section in request.app[METRICS].sections)
    # Only the SQLite backend has this cache (storage/metadata/sqlite/read_cache.py).
    reads = getattr(registry.db, "manifest_reads", None)
    if reads is not None:
        text += (
            "# HELP trustyard_manifest_reads_from_memory_total Manifest reads answered from "
            "memory (nothing committed since they were read).\n"
            "# TYPE trustyard_manifest_reads_from_memory_total counter\n"
            f"trustyard_manifest_reads_from_memory_total {reads.hits}\n"
        )
    return web.Response(text=text, content_type="text/plain", charset="utf-8")
