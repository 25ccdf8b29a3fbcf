"""The policy engine: which rules match a request, and what they conclude together.

A `Policy` is immutable; reloading builds a new one and swaps it in whole. Evaluation is pure:
the facts are gathered before (see `policies.facts`), so that deciding is synchronous and a
decision can be cached by (policy version, request, evidence version).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from policies.decisions import Action, Decision, RuleVerdict, Verdict
from policies.facts import ImageFacts, PolicyRequest
from policies.library.declaration import Library
from policies.quarantine import PRODUCERS_READ, QuarantineReaders
from policies.rules import Rule
from policies.signatures.proofs import SignatureChecks, signature_checks

#: (action, repository) pairs whose candidate rules a policy remembers (then it starts over).
MATCHES_REMEMBERED = 4096


@dataclass(frozen=True)
class Policy:
    """A loaded policy file: its rules, default mode, version (content hash) and source."""

    rules: tuple[Rule, ...]
    mode: str = "enforce"
    version: str = "none"
    source: str = "(no policy)"
    library: Library | None = None  # the `library:` section (base images), when declared
    files: tuple[str, ...] = ()  # files the policy references (keys, certificates, roots)
    quarantine: QuarantineReaders = PRODUCERS_READ  # who may read quarantined images
    # The decision for a request no rule matches (`default:`; allow when the file says nothing).
    default: str = "allow"
    # Artifact types (`artifacts.exempt_types`) that skip image rules when nothing is runnable.
    exempt_types: frozenset[str] = frozenset()

    @cached_property
    def signatures(self) -> SignatureChecks:
        """What the policy verifies signatures against (every push asks: found once, when first
        asked; a reload builds a new `Policy`, which finds its own)."""
        return signature_checks(self.rules, self.library)

    @property
    def allows_everything(self) -> bool:
        """Whether this is the no-policy policy (every push, pull and delete is allowed)."""
        return self is UNSAFE_ALLOW_EVERYTHING

    def matching(self, request: PolicyRequest) -> list[tuple[Rule, tuple[str, ...]]]:
        """The rules that apply to `request`, each with the request's tags it concerns."""
        found = []
        for rule in self._concerning(request.action, request.repository):
            tags = rule.match.applies_to_tags(request.tags)
            if tags is not None:
                found.append((rule, tags))
        return found

    def _concerning(self, action: Action, repository: str) -> tuple[Rule, ...]:
        """The rules that may apply to `action` on `repository`: matched against every rule's
        repository globs once per (action, repository) this policy sees (pushes by tag name a
        new tag each time, but their repositories repeat), not on every request."""
        key = (action, repository)
        rules = self._rules_by_repository.get(key)
        if rules is None:
            rules = tuple(r for r in self.rules if r.match.concerns(action, repository))
            if len(self._rules_by_repository) >= MATCHES_REMEMBERED:
                self._rules_by_repository.clear()
            self._rules_by_repository[key] = rules
        return rules

    @cached_property
    def _rules_by_repository(self) -> dict[tuple[Action, str], tuple[Rule, ...]]:
        # Belongs to this Policy, which is immutable: a reload builds a new one, with its own.
        return {}

    def evaluate(
        self,
        request: PolicyRequest,
        image: ImageFacts,
        matching: list[tuple[Rule, tuple[str, ...]]] | None = None,
    ) -> Verdict:
        """Every matching rule's verdict on `request` about `image` (all must hold: AND); with
        no matching rule, the policy's `default:` decision."""
        if matching is None:
            matching = self.matching(request)
        rules = tuple(rule.evaluate(request, image, tags) for rule, tags in matching)
        if not rules and self.default == "deny":
            rules = (DEFAULT_DENY_VERDICT[self.mode],)
        return Verdict(
            action=request.action,
            repository=request.repository,
            digest=request.digest,
            policy_version=self.version,
            rules=rules,
        )

    def describe_default(self) -> str:
        """What happens to a request no rule matches, in words (start-up log, `policy explain`)."""
        if self.default == "deny":
            return "default: deny (a request no rule matches is refused)"
        return (
            "default: allow (a request no rule matches is allowed; write default: deny to refuse)"
        )


#: The name a `default: deny` denial carries in messages and the decision log.
DEFAULT_RULE = "default"
DEFAULT_DENY_VERDICT = {
    mode: RuleVerdict(
        DEFAULT_RULE,
        mode,
        (Decision.deny("no rule matches this request and the policy's default is deny"),),
    )
    for mode in ("enforce", "warn")
}


#: No policy file: nothing is checked and nothing is recorded. The server says so loudly at
#: start-up; the name is meant to look as dangerous as it is.
UNSAFE_ALLOW_EVERYTHING = Policy(rules=(), mode="enforce", version="none", source="(no policy)")
