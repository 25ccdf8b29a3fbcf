"""What the engine concludes: one `Decision` per requirement, one `RuleVerdict` per matching rule,
one `Verdict` per request, each carrying its reason in words a developer understands from the
`docker push` output alone."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from functools import cached_property


class Outcome(StrEnum):
    """How a request ends: allowed, refused, or allowed with a recorded would-be denial."""

    ALLOW = "allow"
    DENY = "deny"
    WARN = "warn"


class Action(StrEnum):
    """What a request does to a manifest."""

    PUSH = "push"
    PULL = "pull"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of one requirement: whether it holds, and why (what was expected, what found)."""

    allowed: bool
    reason: str
    # When the passing of time alone may change the answer (a scan ageing out, an exception
    # expiring), in epoch seconds; None: only new evidence or a new policy changes it.
    valid_until: float | None = None

    @classmethod
    def allow(cls, reason: str, *, valid_until: float | None = None) -> Decision:
        """The requirement holds (until `valid_until`, if given)."""
        return cls(True, reason, valid_until)

    @classmethod
    def deny(cls, reason: str, *, valid_until: float | None = None) -> Decision:
        """The requirement does not hold (until `valid_until`, if given)."""
        return cls(False, reason, valid_until)


def earliest(moments: Iterable[float | None]) -> float | None:
    """The first of some `valid_until` moments (None when none is given)."""
    return min((m for m in moments if m is not None), default=None)


def day_end(day: date) -> float:
    """The first moment after `day` (UTC): when a limit good "until `day`" runs out."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() + 86400


@dataclass(frozen=True, slots=True)
class RuleVerdict:
    """What one matching rule concluded about a request."""

    rule: str
    mode: str  # enforce | warn
    decisions: tuple[Decision, ...]

    @property
    def held(self) -> bool:
        """Whether every requirement of the rule holds (a rule that decided nothing does not)."""
        return bool(self.decisions) and all(d.allowed for d in self.decisions)

    @property
    def outcome(self) -> Outcome:
        """allow when the rule holds; deny or warn (by mode) when it does not."""
        if self.held:
            return Outcome.ALLOW
        return Outcome.WARN if self.mode == "warn" else Outcome.DENY

    @property
    def valid_until(self) -> float | None:
        """When time alone may change the rule's verdict (None: never)."""
        return earliest(d.valid_until for d in self.decisions)

    @property
    def reason(self) -> str:
        """The failing requirements' reasons, or the held ones' when the rule holds."""
        failing = [d.reason for d in self.decisions if not d.allowed]
        return "; ".join(failing or [d.reason for d in self.decisions])

    def message(self) -> str:
        """`rule "NAME": REASON`, as the client prints it after `denied: `."""
        return f'rule "{self.rule}": {self.reason}'


@dataclass(frozen=True)
class Verdict:
    """The engine's answer to one request: every matching rule's verdict, and the outcome."""

    action: Action
    repository: str
    digest: str
    policy_version: str
    rules: tuple[RuleVerdict, ...]

    # Computed once: a cached verdict answers many pulls.
    @cached_property
    def outcome(self) -> Outcome:
        """deny if an enforcing rule fails; warn if only warning rules fail; else allow."""
        outcomes = {r.outcome for r in self.rules}
        if Outcome.DENY in outcomes:
            return Outcome.DENY
        return Outcome.WARN if Outcome.WARN in outcomes else Outcome.ALLOW

    @cached_property
    def valid_until(self) -> float | None:
        """When time alone may change the verdict (None: never): a cached verdict is not used
        from then on."""
        return earliest(r.valid_until for r in self.rules)

    @cached_property
    def failures(self) -> tuple[RuleVerdict, ...]:
        """The rules that do not hold (enforcing first)."""
        failed = [r for r in self.rules if not r.held]
        return tuple(sorted(failed, key=lambda r: r.mode != "enforce"))

    @cached_property
    def rule(self) -> str | None:
        """The name of the first failing rule, if any."""
        failed = self.failures
        return failed[0].rule if failed else None

    @cached_property
    def reason(self) -> str:
        """Every failing rule with its reason; or a summary of what held."""
        failed = self.failures
        if failed:
            return "; ".join(r.message() for r in failed)
        if not self.rules:
            return "no rule matches"
        names = ", ".join(f'"{r.rule}"' for r in self.rules)
        return f"every matching rule holds: {names}"
