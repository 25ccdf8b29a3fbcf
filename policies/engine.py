"""The policy engine: which rules match a request, and what they conclude together.

A `Policy` is immutable; reloading builds a new one and swaps it in whole. Evaluation is pure:
the facts are gathered before (see `policies.facts`), so that deciding is synchronous and a
decision can be cached by (policy version, request, evidence version).
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.decisions import Verdict
from policies.facts import ImageFacts, PolicyRequest
from policies.library.declaration import Library
from policies.rules import Rule


@dataclass(frozen=True)
class Policy:
    """A loaded policy file: its rules, default mode, version (content hash) and source."""

    rules: tuple[Rule, ...]
    mode: str = "enforce"
    version: str = "none"
    source: str = "(no policy)"
    library: Library | None = None  # the `library:` section (base images), when declared
    files: tuple[str, ...] = ()  # files the policy references (keys, certificates, roots)

    @property
    def allows_everything(self) -> bool:
        """Whether this is the no-policy policy (every push, pull and delete is allowed)."""
        return self is UNSAFE_ALLOW_EVERYTHING

    def matching(self, request: PolicyRequest) -> list[tuple[Rule, tuple[str, ...]]]:
        """The rules that apply to `request`, each with the request's tags it concerns."""
        found = []
        for rule in self.rules:
            tags = rule.match.applies(request)
            if tags is not None:
                found.append((rule, tags))
        return found

    def evaluate(
        self,
        request: PolicyRequest,
        image: ImageFacts,
        matching: list[tuple[Rule, tuple[str, ...]]] | None = None,
    ) -> Verdict:
        """Every matching rule's verdict on `request` about `image` (all must hold: AND)."""
        if matching is None:
            matching = self.matching(request)
        return Verdict(
            action=request.action,
            repository=request.repository,
            digest=request.digest,
            policy_version=self.version,
            rules=tuple(rule.evaluate(request, image, tags) for rule, tags in matching),
        )


#: No policy file: nothing is checked and nothing is recorded. The server says so loudly at
#: start-up; the name is meant to look as dangerous as it is.
UNSAFE_ALLOW_EVERYTHING = Policy(rules=(), mode="enforce", version="none", source="(no policy)")
