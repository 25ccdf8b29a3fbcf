"""Token scopes as the Docker registry token protocol writes them, and their intersection.

A scope is `type[(class)]:name:actions`, e.g. `repository:team/app:pull,push` or
`registry:catalog:*`. The name may itself contain `:` (it sits between the first and the last
colon). A client asks for scopes; the token server grants, for each, only the actions the caller
is allowed: the intersection of what was asked and what the permissions give.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from storage.oci.grammar import MAX_NAME_LENGTH, NAME_RE

#: Actions a repository scope can carry, in the order they are written.
REPOSITORY_ACTIONS = ("pull", "push", "delete")
#: The resource types this registry knows; others are refused as malformed.
RESOURCE_TYPES = ("repository", "registry")
#: The only `registry` resource: the catalog.
CATALOG = "catalog"


class ScopeError(ValueError):
    """A scope string that does not follow `type:name:actions`; the message says why."""


@dataclass(frozen=True)
class Scope:
    """Access asked for, or granted, on one resource."""

    type: str
    name: str
    actions: frozenset[str]

    def __str__(self) -> str:
        order = {action: position for position, action in enumerate(REPOSITORY_ACTIONS)}
        actions = sorted(self.actions, key=lambda action: (order.get(action, 99), action))
        return f"{self.type}:{self.name}:{','.join(actions)}"

    def claim(self) -> dict[str, object]:
        """The entry of a token's `access` claim."""
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}


def parse_scope(text: str) -> Scope:
    """Parse one scope; raise `ScopeError` for anything malformed."""
    if len(text) > MAX_NAME_LENGTH + 64:
        raise ScopeError("scope too long")
    type_part, sep, rest = text.partition(":")
    name, sep2, actions_text = rest.rpartition(":")
    if not sep or not sep2:
        raise ScopeError(f"scope {text[:80]!r}: expected type:name:actions")
    # `repository(plugin)` names a resource class; the class does not change access.
    resource_type = type_part.split("(", 1)[0] if type_part.endswith(")") else type_part
    if resource_type not in RESOURCE_TYPES:
        raise ScopeError(f"scope {text[:80]!r}: unknown resource type {type_part[:40]!r}")
    actions = frozenset(a.strip() for a in actions_text.split(",") if a.strip())
    if not actions:
        raise ScopeError(f"scope {text[:80]!r}: no actions")
    if resource_type == "registry":
        if name != CATALOG or actions != {"*"}:
            raise ScopeError(f"scope {text[:80]!r}: only registry:catalog:* is known")
        return Scope(resource_type, name, actions)
    if not name or len(name) > MAX_NAME_LENGTH or NAME_RE.fullmatch(name) is None:
        raise ScopeError(f"scope {text[:80]!r}: invalid repository name")
    if "*" in actions:
        actions = (actions - {"*"}) | set(REPOSITORY_ACTIONS)
    unknown = actions - set(REPOSITORY_ACTIONS)
    if unknown:
        raise ScopeError(f"scope {text[:80]!r}: unknown actions {sorted(unknown)}")
    return Scope(resource_type, name, frozenset(actions))


def parse_scopes(texts: Iterable[str]) -> list[Scope]:
    """Parse scopes from query values; OAuth2 forms separate several with spaces."""
    scopes: list[Scope] = []
    for text in texts:
        scopes.extend(parse_scope(part) for part in text.split() if part)
    return merge(scopes)


def merge(scopes: Iterable[Scope]) -> list[Scope]:
    """Join scopes on the same resource (their actions united), in first-seen order."""
    merged: dict[tuple[str, str], set[str]] = {}
    for scope in scopes:
        merged.setdefault((scope.type, scope.name), set()).update(scope.actions)
    return [Scope(kind, name, frozenset(actions)) for (kind, name), actions in merged.items()]


def intersect(
    requested: Iterable[Scope], allowed: Callable[[str, str], frozenset[str]]
) -> list[Scope]:
    """What to grant: each requested scope cut down to the actions `allowed(type, name)` gives.

    Scopes left with no action are dropped, so a token never claims access it does not carry.
    """
    granted: list[Scope] = []
    for scope in merge(requested):
        actions = scope.actions & allowed(scope.type, scope.name)
        if actions:
            granted.append(Scope(scope.type, scope.name, frozenset(actions)))
    return granted


def covers(granted: Iterable[Scope], resource_type: str, name: str, action: str) -> bool:
    """Whether `granted` includes `action` on the resource."""
    return any(
        scope.type == resource_type
        and scope.name == name
        and (action in scope.actions or "*" in scope.actions)
        for scope in granted
    )


def covers_all(
    granted: Iterable[Scope], resource_type: str, name: str, actions: Iterable[str]
) -> bool:
    """Whether `granted` includes every one of `actions` on the resource (`covers` for each)."""
    held: set[str] = set()
    for scope in granted:
        if scope.type == resource_type and scope.name == name:
            held |= scope.actions
    return "*" in held or held.issuperset(actions)
