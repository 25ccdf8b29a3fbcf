"""`GET /api/v1/health` (Trustyard's own API): what an operator checks first. The policy in force
(version, file, its text and where each rule starts), event deliveries not yet made per endpoint,
the storage backend, and the last garbage collection. Secrets (endpoint URLs and headers, S3
credentials) are never shown."""

from __future__ import annotations

import asyncio
import functools
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aiohttp import web

from registry.context import context
from registry.events.hub import EVENTS

#: The policy text shown, at most (a policy file is a few kilobytes).
MAX_POLICY_TEXT = 1024 * 1024
STARTED = time.time()


def _iso(moment: float | None) -> str | None:
    return None if moment is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _read_policy(path: Path) -> str | None:
    try:
        with path.open("rb") as source:
            data = source.read(MAX_POLICY_TEXT + 1)
    except OSError:
        return None
    if len(data) > MAX_POLICY_TEXT:
        return None
    return data.decode("utf-8", errors="replace")


@functools.cache
def _trustyard_version() -> str:
    try:
        return version("trustyard")
    except PackageNotFoundError:
        return "unknown"


def _storage(raw: dict[str, Any]) -> dict[str, Any]:
    section = raw.get("storage") or {}
    backend = str(section.get("backend", "filesystem"))
    shown: dict[str, Any] = {
        "backend": backend,
        "delete_enabled": bool(section.get("delete_enabled")),
    }
    if backend == "s3":
        s3 = section.get("s3") or {}
        for key in ("bucket", "prefix", "region"):
            if isinstance(s3.get(key), str):
                shown[key] = s3[key]
    return shown


async def health(request: web.Request) -> web.StreamResponse:
    """The health document."""
    ctx = context(request)
    gate = ctx.policy
    policy = gate.policy
    text = await asyncio.to_thread(_read_policy, gate.path) if gate.path is not None else None
    endpoints: dict[str, dict[str, Any]] = {
        e.name: {"name": e.name, "pending": 0, "failed": 0, "oldest": None, "last_error": None}
        for e in request.app[EVENTS].settings.endpoints
    }
    for name, state, count, oldest, error in await ctx.db.event_backlog():
        entry = endpoints.setdefault(
            name, {"name": name, "pending": 0, "failed": 0, "oldest": None, "last_error": None}
        )
        if state in ("pending", "failed"):
            entry[state] = count
        first = entry["oldest"]
        entry["oldest"] = _iso(oldest) if first is None else min(first, _iso(oldest) or first)
        entry["last_error"] = entry["last_error"] or error
    gc = await ctx.db.last_gc_run()
    return web.json_response(
        {
            "version": _trustyard_version(),
            "started_at": _iso(STARTED),
            "policy": {
                "version": policy.version,
                "file": None if gate.path is None else str(gate.path),
                "allows_everything": policy.allows_everything,
                "mode": policy.mode,
                "text": text,
                "rules": [{"name": r.name, "line": r.line, "mode": r.mode} for r in policy.rules],
            },
            "events": {
                "pending": sum(e["pending"] for e in endpoints.values()),
                "failed": sum(e["failed"] for e in endpoints.values()),
                "endpoints": list(endpoints.values()),
            },
            "storage": _storage(ctx.config.raw),
            "gc": None
            if gc is None
            else {"started_at": _iso(gc[0]), "finished_at": _iso(gc[1]), "removed": gc[2]},
        }
    )
