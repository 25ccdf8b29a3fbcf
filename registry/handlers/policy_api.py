"""Trustyard's own API about policy (not part of the OCI spec), under `/api/v1/`:

- `GET /api/v1/decisions`: the decision log, newest first; filters `repository`, `outcome`
  (allow | deny | warn), `action` (push | pull | delete), `rule`, `identity`, `since` and `until`
  (epoch seconds, ISO 8601 time, or a duration ago such as `15m`); pages with `n` (default
  100, at most 1000) and `last` (the id to continue before), and a `Link` header to the next
  page.
- `GET /api/v1/images/{repository}/{reference}/status`: whether a stored image is pullable or
  quarantined under the current policy, and every matching pull rule's verdict.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from policies.decisions import Action, Outcome, Verdict
from policies.facts import PolicyRequest
from registry.context import context
from registry.errors import RegistryError
from registry.handlers.manifests import find_manifest
from registry.identity import identity
from registry.path_parameters import path_parameter
from shared.durations import parse_since
from storage.oci.errors import PAGINATION_NUMBER_INVALID, QUERY_INVALID
from storage.oci.grammar import check_name

#: A filter of the decisions API that is not understood (Trustyard's API, not the OCI spec's).

DEFAULT_PAGE = 100
MAX_PAGE = 1000

_FILTERS = {
    "outcome": {o.value for o in Outcome},
    "action": {a.value for a in Action},
}


def _is_number(text: str) -> bool:
    """ASCII digits of a number SQLite can hold (Unicode digits and huge ids are refused)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def _bad_query(name: str, value: str, reason: str) -> RegistryError:
    code = PAGINATION_NUMBER_INVALID if name == "n" else QUERY_INVALID
    return RegistryError(code, {name: value[:100], "reason": reason}, message=f"{name}: {reason}")


async def list_decisions(request: web.Request) -> web.StreamResponse:
    """`GET /api/v1/decisions`: the decision log, filtered and paginated."""
    ctx = context(request)
    query = request.query
    filters: dict[str, Any] = {}
    for name in ("repository", "outcome", "action", "rule", "identity"):
        value = query.get(name)
        if value:
            allowed = _FILTERS.get(name)
            if allowed is not None and value not in allowed:
                raise _bad_query(name, value, f"expected one of {', '.join(sorted(allowed))}")
            filters[name] = value
    if query.get("since"):
        try:
            filters["since"] = parse_since(query["since"])
        except ValueError as exc:
            raise _bad_query("since", query["since"], str(exc)) from None
    if query.get("until"):
        try:
            filters["until"] = parse_since(query["until"])
        except ValueError as exc:
            raise _bad_query("until", query["until"], str(exc)) from None
    limit = DEFAULT_PAGE
    if query.get("n"):
        if not _is_number(query["n"]):
            raise _bad_query("n", query["n"], "n must be an integer >= 0")
        limit = min(int(query["n"]), MAX_PAGE)
    if query.get("last"):
        if not _is_number(query["last"]):
            raise _bad_query("last", query["last"], "last must be a decision id")
        filters["before_id"] = int(query["last"])
    await ctx.policy.flush()
    rows = await ctx.db.list_decisions(limit=limit + 1, **filters)
    more = len(rows) > limit
    rows = rows[:limit]
    body: dict[str, Any] = {
        "policy_version": ctx.policy.policy.version,
        "decisions": [asdict(row) for row in rows],
    }
    headers = {}
    if more and rows:
        params = {k: v for k, v in query.items() if k not in ("last", "n")}
        next_url = f"/api/v1/decisions?{urlencode({**params, 'n': limit, 'last': rows[-1].id})}"
        body["next"] = next_url
        headers["Link"] = f'<{next_url}>; rel="next"'
    return web.json_response(body, headers=headers)


def verdict_document(verdict: Verdict) -> list[dict[str, str]]:
    """Each matching rule's verdict as JSON."""
    return [
        {"rule": r.rule, "mode": r.mode, "outcome": r.outcome.value, "reason": r.reason}
        for r in verdict.rules
    ]


async def image_status(request: web.Request) -> web.StreamResponse:
    """`GET /api/v1/images/{repository}/{reference}/status`: pullable or quarantined, and why."""
    ctx = context(request)
    name = check_name(path_parameter(request, "repository"))
    reference = path_parameter(request, "reference")
    record = await find_manifest(ctx.db, name, reference)
    policy = ctx.policy.policy
    tags = tuple(await ctx.db.tags_of(name, record.digest))
    pull = PolicyRequest(Action.PULL, name, reference, record.digest, tags, identity(request).name)
    verdict = await ctx.policy.evaluate(pull, record.media_type, record.content, policy)
    outcome = verdict.outcome
    status = {
        Outcome.ALLOW: "pullable",
        Outcome.WARN: "pullable-with-warnings",
        Outcome.DENY: "quarantined",
    }[outcome]
    return web.json_response(
        {
            "repository": name,
            "reference": reference,
            "digest": record.digest,
            "media_type": record.media_type,
            "tags": list(tags),
            "status": status,
            "policy_version": policy.version,
            "no_policy": policy.allows_everything,
            "evidence_version": await ctx.policy.evidence_version(name),
            "rules": verdict_document(verdict),
            "unmet": [r.message() for r in verdict.failures],
        }
    )
