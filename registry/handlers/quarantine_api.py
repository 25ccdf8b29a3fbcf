"""`GET /api/v1/quarantine` (Trustyard's own API): tagged images stored but not pullable under the
current policy, each with the rules it fails, the reasons in the words a denied pull shows, and
the policy line of each rule.

Deciding is real work (signature proofs, scans), so a page walks a bounded number of tags: `n`
tags at most (default 100, at most 500) in (repository, tag) order after `last`
(`repository:tag`), and `next` continues the walk. `checked` says how many were looked at.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from policies.decisions import Action, Outcome
from policies.facts import PolicyRequest
from registry.context import context
from registry.handlers.query_params import bad_query, page_size, text
from registry.identity import identity
from storage.metadata import tagged_images

DEFAULT_PAGE = 100
MAX_PAGE = 500


def _cursor(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    repository, sep, tag = value.rpartition(":")
    if not sep or not repository or not tag:
        raise bad_query("last", value, "expected repository:tag")
    return repository, tag


async def list_quarantine(request: web.Request) -> web.StreamResponse:
    """Quarantined images among the next `n` tags."""
    ctx = context(request)
    limit = page_size(request.query, DEFAULT_PAGE, MAX_PAGE)
    after = _cursor(text(request.query, "last", 400))
    policy = ctx.policy.policy
    lines = {rule.name: rule.line for rule in policy.rules}
    rows = await tagged_images(ctx.db, limit=limit + 1, after=after)
    page = rows[:limit]
    images: list[dict[str, Any]] = []
    who = identity(request).name
    for repository, tag, digest in page if not policy.allows_everything else ():
        record = await ctx.db.get_manifest(repository, digest)
        if record is None:  # deleted while we walked
            continue
        tags = tuple(await ctx.db.tags_of(repository, digest))
        pull = PolicyRequest(Action.PULL, repository, tag, digest, tags, who)
        verdict = await ctx.policy.evaluate(pull, record.media_type, record.content, policy)
        if verdict.outcome is not Outcome.DENY:
            continue
        images.append(
            {
                "repository": repository,
                "tag": tag,
                "digest": digest,
                "unmet": [
                    {
                        "rule": r.rule,
                        "line": lines.get(r.rule, 0),
                        "message": r.message(),
                        "requirements": [d.reason for d in r.decisions if not d.allowed],
                    }
                    for r in verdict.failures
                ],
            }
        )
    body: dict[str, Any] = {
        "policy_version": policy.version,
        "checked": len(page),
        "images": images,
    }
    if len(rows) > limit:
        last = f"{page[-1][0]}:{page[-1][1]}"
        body["next"] = f"/api/v1/quarantine?{urlencode({'n': limit, 'last': last})}"
    return web.json_response(body)
