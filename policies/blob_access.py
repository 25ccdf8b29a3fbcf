"""The blob gate: whether a repository's blob may be read, and what content a protected manifest
needs (so that it cannot be deleted from under it).

Pull rules judge manifests; a manifest they refuse is quarantined. Its blobs must not leak
through the blob endpoints (`GET`/`HEAD /v2/<name>/blobs/<digest>`, a cross-repository mount),
or anybody who learns the digests could fetch the layers, or mount them into a repository no
rule watches and pull them from there. So a blob of a repository stands as one of:

- **pullable**: some manifest of the repository that needs it (directly, or as the child of an
  index that may be pulled) may be pulled, or no rule concerns the repository at all (and the
  policy's decision for requests no rule matches lets them through). A blob
  shared with a pullable image stays pullable: the puller could fetch it through that image.
- **quarantined**: every manifest of the repository that needs it is refused; the denial names
  the rules of the refused image.
- **unreferenced**: no manifest of the repository needs it: a push in progress (clients check the
  blobs they uploaded before pushing the manifest), a push the policy refused, or an image
  deleted since. When any push or pull rule concerns the repository, only those who may push to
  it may read such a blob.

The standing is decided once per (policy version, repository, blob digest, evidence version) and
cached like pull verdicts: any push, delete, signature or scan in the repository bumps its
evidence version, and time-limited verdicts are decided afresh once they expire.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from policies.decisions import Action, Outcome, Verdict, earliest
from policies.engine import Policy
from policies.facts import ImageFacts, PolicyRequest
from policies.rules import Rule
from storage.metadata import ManifestRecord, MetadataDB

#: Manifests needing one blob (or one child manifest) that are looked at, newest first. A blob
#: whose newest referencing manifests are all refused is refused: past this bound, fail closed.
MAX_REFERENCING = 256

#: How many index levels are climbed from an image manifest to the manifests that need it.
MAX_DEPTH = 4

#: Cached standings kept at most; the cache is emptied when it is full.
CACHE_SIZE = 100_000

#: The decision log's identity for decisions the blob gate takes about manifests.
GATE_IDENTITY = "blob gate"

PullVerdict = Callable[
    [Policy, str, str, ManifestRecord, str], Awaitable[tuple[Verdict, PolicyRequest]]
]


class Standing(StrEnum):
    """Where a blob stands with the pull rules of one repository."""

    PULLABLE = "pullable"
    QUARANTINED = "quarantined"
    UNREFERENCED = "unreferenced"


@dataclass(frozen=True, slots=True)
class BlobStanding:
    """A blob's standing in a repository, with the refused manifest and its verdict when
    quarantined, or the rule that concerns the repository when unreferenced."""

    standing: Standing
    manifest: str | None = None
    verdict: Verdict | None = None
    rule: str | None = None  # the rule that makes an unreferenced blob private
    valid_until: float | None = None


@dataclass(frozen=True, slots=True)
class Reader:
    """Who asks to read a blob: their identity, whether they may push to its repository, and
    (asked only for quarantined content) why they may read quarantined images of it anyway,
    None when they may not."""

    identity: str
    producer: bool
    quarantine_reader: Callable[[], str | None] | None = None


_Key = tuple[str, str, str, int]


def rules_concerning(policy: Policy, repository: str, actions: frozenset[Action]) -> list[Rule]:
    """The rules for any of `actions` whose repositories include `repository`, whatever their
    tags."""
    found = []
    for rule in policy.rules:
        match = rule.match
        if not match.actions & actions or not match.repositories.matches(repository):
            continue
        excluded = match.exclude_repositories
        if excluded is not None and excluded.matches(repository):
            continue
        found.append(rule)
    # The rule named when refusing: a pull rule before a push rule, one for every tag first.
    return sorted(
        found, key=lambda r: (Action.PULL not in r.match.actions, r.match.tags is not None)
    )


_PUSH_OR_PULL = frozenset({Action.PUSH, Action.PULL})


@dataclass(frozen=True, slots=True)
class _Scope:
    guard: str | None  # the rule named when an unreferenced blob is refused; None: none is
    pulls_judged: bool  # whether pulls of the repository's manifests can be refused at all


def _scope(policy: Policy, repository: str) -> _Scope:
    """A repository's scope: the rules concerning it, and what the policy decides for a pull
    no rule matches (its `default:`, when the policy has one)."""
    rules = rules_concerning(policy, repository, _PUSH_OR_PULL)
    unmatched = PolicyRequest(Action.PULL, repository, "", "", ())
    default = policy.evaluate(unmatched, ImageFacts(digest="", media_type=""), [])
    default_denies = default.outcome is Outcome.DENY
    pulls_judged = default_denies or any(Action.PULL in r.match.actions for r in rules)
    if rules:
        return _Scope(rules[0].name, pulls_judged)
    return _Scope(default.rule if default_denies else None, pulls_judged)


class BlobAccess:
    """Decides and caches blob standings; walks from a blob up to the manifests needing it."""

    def __init__(self, db: MetadataDB, pull_verdict: PullVerdict) -> None:
        self.db = db
        self._pull_verdict = pull_verdict
        self._cache: dict[_Key, BlobStanding] = {}
        self._scopes: dict[tuple[str, str], _Scope] = {}

    def clear(self) -> None:
        """Forget every cached standing (a new policy)."""
        self._cache.clear()
        self._scopes.clear()

    def _scope(self, policy: Policy, repository: str) -> _Scope:
        """What the policy says about the repository's blobs, worked out once per policy
        version: the rule that makes its unreferenced blobs private (None: nothing does), and
        whether its manifests' pull verdicts must be consulted."""
        key = (policy.version, repository)
        found = self._scopes.get(key)
        if found is None:
            if len(self._scopes) >= CACHE_SIZE:
                self._scopes.clear()
            found = self._scopes[key] = _scope(policy, repository)
        return found

    async def standing(
        self, policy: Policy, repository: str, digest: str, evidence: int
    ) -> BlobStanding:
        """The blob's standing in `repository` under `policy` (cached by evidence version)."""
        scope = self._scope(policy, repository)
        if scope.guard is None:  # a repository the policy leaves open: nothing to hide
            return BlobStanding(Standing.PULLABLE)
        key = (policy.version, repository, digest, evidence)
        found = self._cache.get(key)
        if found is not None and (found.valid_until is None or time.time() < found.valid_until):
            return found
        found = await self._decide(policy, repository, digest, scope)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = found
        return found

    async def _decide(
        self, policy: Policy, repository: str, digest: str, scope: _Scope
    ) -> BlobStanding:
        needing = await self.db.manifests_needing(repository, digest, "blob", MAX_REFERENCING)
        if not needing:
            return BlobStanding(Standing.UNREFERENCED, rule=scope.guard)
        if not scope.pulls_judged:
            return BlobStanding(Standing.PULLABLE)
        refused: tuple[str, Verdict] | None = None
        moments: list[float | None] = []
        for manifest in needing:
            pullable, verdict, until = await self._pullable(policy, repository, manifest, 0)
            moments.append(until)
            if pullable:
                return BlobStanding(Standing.PULLABLE, valid_until=earliest(moments))
            if refused is None and verdict is not None:
                refused = (manifest, verdict)
        if refused is None:  # refused only for want of a pullable index above it
            return BlobStanding(
                Standing.UNREFERENCED, rule=scope.guard, valid_until=earliest(moments)
            )
        return BlobStanding(
            Standing.QUARANTINED, refused[0], refused[1], valid_until=earliest(moments)
        )

    async def _pullable(
        self, policy: Policy, repository: str, digest: str, depth: int
    ) -> tuple[bool, Verdict | None, float | None]:
        """Whether the manifest may be pulled as part of something: its own verdict allows it,
        and it is tagged, or needed by no index, or needed by an index that is pullable. With
        the refusing verdict, and when time alone may change the answer."""
        record = await self.db.get_manifest(repository, digest)
        if record is None:
            return False, None, None
        verdict, _ = await self._pull_verdict(policy, repository, digest, record, GATE_IDENTITY)
        until = verdict.valid_until
        if verdict.outcome is Outcome.DENY:
            return False, verdict, until
        parents = await self.db.manifests_needing(repository, digest, "manifest", MAX_REFERENCING)
        if not parents or await self.db.tags_of(repository, digest):
            return True, None, until
        if depth >= MAX_DEPTH:
            return False, None, until
        refusal: Verdict | None = None
        moments = [until]
        for parent in parents:
            pullable, parent_verdict, parent_until = await self._pullable(
                policy, repository, parent, depth + 1
            )
            moments.append(parent_until)
            if pullable:
                return True, None, earliest(moments)
            refusal = refusal or parent_verdict
        return False, refusal, earliest(moments)

    async def needing(
        self, repository: str, digest: str, kind: str, limit: int
    ) -> list[str] | None:
        """Every manifest of the repository that needs `digest` (a blob or a child manifest),
        directly or through indexes; None when more than `limit` do."""
        found: dict[str, None] = {}
        frontier = [(digest, kind)]
        while frontier:
            child, child_kind = frontier.pop()
            for manifest in await self.db.manifests_needing(
                repository, child, child_kind, limit + 1
            ):
                if manifest in found or manifest == digest:
                    continue
                found[manifest] = None
                if len(found) > limit:
                    return None
                frontier.append((manifest, "manifest"))
        return list(found)
