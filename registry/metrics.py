"""Prometheus metrics: request counts and latencies by route and status, bytes in and out.

Served at `GET /metrics` in the Prometheus text exposition format. Counters live in this process
only; labels are bounded (route names from `registry.routes`, not raw paths).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from aiohttp import web

from registry.context import context

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
        self.started = time.time()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        self.requests[(method, route, status)] += 1
        key = (method, route)
        self.duration_sum[key] += seconds
        buckets = self.duration_buckets[key]
        for position, bound in enumerate(BUCKETS):
            if seconds <= bound:
                buckets[position] += 1

    def render(self, uploads_in_progress: int, upload_bytes: int) -> str:
        """The text exposition format."""
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
        route = request.get(ROUTE_KEY, "other")
        request.app[METRICS].observe(request.method, route, status, time.perf_counter() - started)


async def metrics_endpoint(request: web.Request) -> web.StreamResponse:
    """`GET /metrics`."""
    uploads = context(request).uploads
    text = request.app[METRICS].render(uploads.in_progress, uploads.bytes_received)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")
