"""`GET /healthz` (the process answers) and `GET /readyz` (it can serve): for probes.

Both answer without authentication, so that Kubernetes and compose probes pass whether `auth`
is on or not, and say nothing about the registry's content. `/readyz` answers 200 only when
the metadata database answers a query, the blob store answers a stat, and the policy (when one
is configured) is loaded; otherwise 503 with the check that failed.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from policies.engine import UNSAFE_ALLOW_EVERYTHING
from registry.context import CONTEXT
from registry.expect import expect_continue
from storage.oci.digests import parse_digest

log = logging.getLogger(__name__)

#: The digest of zero bytes: asking the blob store for its size is a cheap round trip.
_EMPTY = parse_digest("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
#: How long a check may take before the registry counts as not ready.
CHECK_TIMEOUT = 5.0

PROBE_PATHS = frozenset({"/healthz", "/readyz"})


async def healthz(request: web.Request) -> web.StreamResponse:
    """`GET /healthz`: the process is up and its event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """`GET /readyz`: database, blob store and policy are ready (200), or which is not (503)."""
    context = request.app.get(CONTEXT)
    checks: dict[str, str] = {}
    if context is None:
        checks["startup"] = "still starting"
    else:
        checks["database"] = await _check(context.db.ping())
        checks["blob_store"] = await _check(context.store.size(_EMPTY))
        configured = context.config.policy_file is not None
        loaded = context.policy.policy is not UNSAFE_ALLOW_EVERYTHING
        checks["policy"] = "ok" if loaded or not configured else "not loaded"
    ready = all(result == "ok" for result in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


async def _check(probe: object) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await probe  # type: ignore[misc]
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT:g}s"
    except Exception as exc:  # any failure means "not ready": say which, never answer 500
        log.warning("readiness check failed: %s", exc)
        return f"failed: {type(exc).__name__}"
    return "ok"


def add_health_routes(app: web.Application) -> None:
    """Mount `/healthz` and `/readyz`."""
    app.router.add_get("/healthz", healthz, expect_handler=expect_continue)
    app.router.add_get("/readyz", readyz, expect_handler=expect_continue)
