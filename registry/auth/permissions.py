"""Who may do what where: roles per namespace glob, for users, groups and anonymous callers.

Each rule names repository globs (the policy file's globs, `shared.globs`: `*` stays within one
path segment, `**` crosses segments) and
gives roles. Roles are cumulative: `pull` < `push` (pull + push) < `delete` (push + delete) <
`admin` (everything, and registry administration when the rule covers every repository).
`viewer` stands apart: on a rule covering every repository it reads the management API and the
console, and it pulls and pushes nothing.
A caller's actions on a repository are the union over every rule whose glob matches it; nothing
matches, nothing is allowed.

The rules are fixed for the life of a `Permissions` object, so what they give one caller on one
repository is derived once and remembered (bounded, least recently used first out). The key is the
caller's whole identity as the users file says it *now* (name, kind and groups, read per request
by the caller of `actions`): a demoted user or a robot moved to another group is another key, and
gets the actions of its current groups from its next request on.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from registry.identity import Identity
from shared.globs import GlobSet

ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "pull": frozenset({"pull"}),
    "push": frozenset({"pull", "push"}),
    "delete": frozenset({"pull", "push", "delete"}),
    "admin": frozenset({"pull", "push", "delete", "admin"}),
    # Reads the management API and the console (on a rule covering every repository), no more.
    "viewer": frozenset({"view"}),
}
NOTHING: frozenset[str] = frozenset()
#: Globs that cover every repository: `admin` there makes a registry administrator.
EVERYTHING_GLOBS = frozenset({"*", "**"})
#: (caller, repository) answers remembered at most: a flood of distinct repository names or
#: callers costs bounded memory and, at worst, the derivation each time as without the memo.
MAX_REMEMBERED = 4096


@dataclass(frozen=True)
class Rule:
    """One entry of `auth.permissions`."""

    repositories: GlobSet
    anonymous: frozenset[str] = NOTHING
    authenticated: frozenset[str] = NOTHING
    users: Mapping[str, frozenset[str]] = field(default_factory=dict)
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> Rule:
        """A rule from its configuration mapping (checked by the schema already)."""
        namespace = entry["namespace"]
        globs = (namespace,) if isinstance(namespace, str) else tuple(namespace)
        return cls(
            repositories=GlobSet.of(globs),
            anonymous=ROLE_ACTIONS[entry["anonymous"]] if "anonymous" in entry else NOTHING,
            authenticated=(
                ROLE_ACTIONS[entry["authenticated"]] if "authenticated" in entry else NOTHING
            ),
            users={name: ROLE_ACTIONS[role] for name, role in entry.get("users", {}).items()},
            groups={name: ROLE_ACTIONS[role] for name, role in entry.get("groups", {}).items()},
        )

    def matches(self, repository: str) -> bool:
        """Whether one of the rule's globs matches the repository name."""
        return self.repositories.matches(repository)

    def actions_for(self, who: Identity) -> frozenset[str]:
        """The actions this rule gives `who` (wherever it matches)."""
        if who.is_anonymous:
            return self.anonymous
        actions = set(self.authenticated) | set(self.users.get(who.name, NOTHING))
        for group in who.groups:
            actions |= self.groups.get(group, NOTHING)
        return frozenset(actions)


class Permissions:
    """The rules of `auth.permissions`, asked per caller and repository."""

    def __init__(self, rules: Iterable[Rule], *, remembered: int = MAX_REMEMBERED) -> None:
        self.rules = tuple(rules)
        self._actions = functools.lru_cache(maxsize=remembered)(self._derive)

    @classmethod
    def from_config(cls, entries: Iterable[Mapping[str, Any]]) -> Permissions:
        """Permissions from the configuration's list of rules."""
        return cls(Rule.from_config(entry) for entry in entries)

    def actions(self, who: Identity, repository: str) -> frozenset[str]:
        """Every action `who` may perform on `repository`."""
        return self._actions(who, repository)

    def _derive(self, who: Identity, repository: str) -> frozenset[str]:
        allowed: set[str] = set()
        for rule in self.rules:
            if rule.matches(repository):
                allowed |= rule.actions_for(who)
        return frozenset(allowed)

    def allows(self, who: Identity, repository: str, action: str) -> bool:
        """Whether `who` may perform `action` on `repository`."""
        return action in self.actions(who, repository)

    @property
    def anonymous_pull_anywhere(self) -> bool:
        """Whether some namespace lets anonymous callers pull (then they may list the catalog,
        which shows them only what they may pull)."""
        return any("pull" in rule.anonymous for rule in self.rules)

    def is_admin(self, who: Identity) -> bool:
        """Whether `who` administers the registry (`admin` on a rule covering everything)."""
        return any(
            EVERYTHING_GLOBS.intersection(rule.repositories.globs)
            and "admin" in rule.actions_for(who)
            for rule in self.rules
        )

    def can_view(self, who: Identity) -> bool:
        """Whether `who` may read the management API and the console: a registry administrator,
        or `viewer` on a rule covering every repository."""
        return self.is_admin(who) or any(
            EVERYTHING_GLOBS.intersection(rule.repositories.globs)
            and "view" in rule.actions_for(who)
            for rule in self.rules
        )
