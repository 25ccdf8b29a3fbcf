"""`GET /api/v1/quarantine` (Trustyard's own API): tagged images stored but not pullable under the
current policy, each with the rules it fails, the reasons in the words a denied pull shows, and
the policy line of each rule.

Deciding is real work (signature proofs, scans), so a page walks a bounded number of tags: `n`
tags at most (default 100, at most 500) in (repository, tag) order after `last`
(`repository:tag`), and for at most `BUDGET` seconds once `MIN_CHECKED` tags were looked at;
`next` continues the walk. `checked` says
how many were looked at. Repositories no pull rule can match are passed over without a look,
and verdicts are remembered until the policy, the repository's evidence or the time they
depend on changes (the key the pull cache uses too).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from policies.decisions import Action, Outcome
from policies.facts import PolicyRequest
from registry.context import context
from registry.handlers.query_params import bad_query, page_size, text
from registry.identity import identity
from registry.scans.webhook import scanners as configured_scanners

DEFAULT_PAGE = 100
MAX_PAGE = 500
#: Seconds a page may spend deciding before it stops and offers `next`...
BUDGET = 0.1
#: ...once it has looked at this many tags (so a small registry is answered in one page).
MIN_CHECKED = 20
#: Verdicts remembered, at most.
MAX_REMEMBERED = 50_000

_Key = tuple[str, str, str, str, str, int]
#: (data dir, policy version, repository, tag, digest, evidence version) -> (unmet, valid until)
_REMEMBERED: OrderedDict[_Key, tuple[list[dict[str, Any]], float | None]] = OrderedDict()


def _may_apply(policy: Any, repository: str) -> bool:
    """Whether any pull rule could apply to the repository (tags can only narrow it further)."""
    for rule in policy.rules:
        match = rule.match
        if Action.PULL not in match.actions or not match.repositories.matches(repository):
            continue
        if match.exclude_repositories is None or not match.exclude_repositories.matches(repository):
            return True
    return False


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
    rows = await ctx.db.tagged_images(limit=limit + 1, after=after)
    page = rows[:limit]
    images: list[dict[str, Any]] = []
    deadline = time.monotonic() + BUDGET
    checked = 0
    for repository, tag, digest in page:
        if checked >= MIN_CHECKED and time.monotonic() > deadline:
            break
        checked += 1
        if policy.allows_everything or not _may_apply(policy, repository):
            continue
        unmet = await _unmet(request, policy, repository, tag, digest)
        if unmet:
            images.append({"repository": repository, "tag": tag, "digest": digest, "unmet": unmet})
    body: dict[str, Any] = {"policy_version": policy.version, "checked": checked, "images": images}
    if checked < len(page) or len(rows) > limit:
        last = f"{page[checked - 1][0]}:{page[checked - 1][1]}"
        body["next"] = f"/api/v1/quarantine?{urlencode({'n': limit, 'last': last})}"
    return web.json_response(body)


async def _unmet(
    request: web.Request, policy: Any, repository: str, tag: str, digest: str
) -> list[dict[str, Any]]:
    """The failing rules of a pull of `repository:tag` (empty: pullable)."""
    ctx = context(request)
    evidence = await ctx.policy.evidence_version(repository)
    key = (str(ctx.config.data_dir), policy.version, repository, tag, digest, evidence)
    known = _REMEMBERED.get(key)
    if known is not None and (known[1] is None or time.time() < known[1]):
        _REMEMBERED.move_to_end(key)
        return known[0]
    record = await ctx.db.get_manifest(repository, digest)
    if record is None:  # deleted while we walked
        return []
    tags = tuple(await ctx.db.tags_of(repository, digest))
    pull = PolicyRequest(Action.PULL, repository, tag, digest, tags, identity(request).name)
    verdict = await ctx.policy.evaluate(pull, record.media_type, record.content, policy)
    rules = {rule.name: rule for rule in policy.rules}
    scanners = [s.name for s in configured_scanners(ctx.config)]
    unmet = []
    for failed in verdict.failures if verdict.outcome is Outcome.DENY else ():
        rule = rules.get(failed.rule)
        requirements = rule.requirements if rule is not None else ()
        unmet.append(
            {
                "rule": failed.rule,
                "line": rule.line if rule is not None else 0,
                "message": failed.message(),
                "requirements": [d.reason for d in failed.decisions if not d.allowed],
                "release": [
                    _release(requirement, decision.reason, scanners)
                    for requirement, decision in zip(requirements, failed.decisions, strict=False)
                    if not decision.allowed
                ],
            }
        )
    _REMEMBERED[key] = (unmet, verdict.valid_until)
    while len(_REMEMBERED) > MAX_REMEMBERED:
        _REMEMBERED.popitem(last=False)
    return unmet


def _release(requirement: Any, reason: str, scanners: list[str]) -> str:
    """What would meet a failing requirement, in an operator's words (its reason otherwise)."""
    signers = getattr(requirement, "signers", None)
    if signers:
        count = getattr(requirement, "count", 1)
        what = (
            "an in-toto attestation"
            if getattr(requirement, "predicate_type", None)
            else ("a signature")
        )
        who = " or ".join(signers) if count <= 1 else f"{count} of {', '.join(signers)}"
        return f"{what} of this digest by {who}, verified against the policy's trust"
    if hasattr(requirement, "require_scan") and hasattr(requirement, "exceptions"):
        by = f" from {' or '.join(scanners)}" if scanners else " (no scanner is configured)"
        return (
            f"a scan report{by} within the rule's limits, or a policy exception for each "
            "finding over them"
        )
    return reason
