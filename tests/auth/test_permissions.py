"""Roles per namespace glob, for users, groups, authenticated and anonymous callers."""

from __future__ import annotations

import pytest

from registry.auth.permissions import Permissions
from registry.identity import ANONYMOUS, Identity
from shared.globs import GlobSet

RULES = [
    {"namespace": "library/**", "anonymous": "pull", "groups": {"ops": "push"}},
    {"namespace": "team-*/**", "groups": {"dev": "push"}},
    {"namespace": ["tools", "tools/*"], "users": {"ann": "delete"}, "authenticated": "pull"},
    {"namespace": "**", "groups": {"ops": "admin"}},
]

ALICE = Identity("alice", "user", frozenset({"dev"}))
OLGA = Identity("olga", "user", frozenset({"ops"}))
ANN = Identity("ann", "user")


@pytest.mark.parametrize(
    ("glob", "name", "matches"),
    [
        ("library/*", "library/base", True),
        ("library/*", "library/base/sub", False),
        ("library/**", "library/base/sub", True),
        ("library/**", "library", False),
        ("team-*/**", "team-a/app", True),
        ("team-*/**", "teams/app", False),
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        ("a.b", "axb", False),
    ],
)
def test_globs(glob, name, matches):
    assert GlobSet.of([glob]).matches(name) is matches


def test_roles_are_cumulative_and_unite_over_rules():
    permissions = Permissions.from_config(RULES)
    assert permissions.actions(ALICE, "team-a/app") == {"pull", "push"}
    assert permissions.actions(ALICE, "library/base") == frozenset()
    assert permissions.actions(ANN, "tools/x") == {"pull", "push", "delete"}
    assert permissions.actions(ALICE, "tools/x") == {"pull"}
    assert permissions.actions(OLGA, "anything/at/all") == {"pull", "push", "delete", "admin"}


def test_anonymous_gets_only_what_is_granted_to_anonymous():
    permissions = Permissions.from_config(RULES)
    assert permissions.actions(ANONYMOUS, "library/base") == {"pull"}
    assert permissions.actions(ANONYMOUS, "tools/x") == frozenset()
    assert permissions.actions(ANONYMOUS, "team-a/app") == frozenset()


def test_nothing_matches_nothing_allowed():
    assert Permissions.from_config([]).actions(OLGA, "x") == frozenset()


def test_registry_admin_needs_admin_on_everything():
    permissions = Permissions.from_config(RULES)
    assert permissions.is_admin(OLGA)
    assert not permissions.is_admin(ANN)
    assert not permissions.is_admin(ANONYMOUS)
