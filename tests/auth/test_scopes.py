"""Token scopes: parsing (including malformed ones) and intersection with what is allowed."""

from __future__ import annotations

import pytest

from registry.auth.scopes import (
    Scope,
    ScopeError,
    covers,
    covers_all,
    intersect,
    parse_scope,
    parse_scopes,
)
from storage.oci.grammar import MAX_NAME_LENGTH


def test_repository_scope_is_parsed():
    scope = parse_scope("repository:team/app:pull,push")
    assert scope == Scope("repository", "team/app", frozenset({"pull", "push"}))
    assert str(scope) == "repository:team/app:pull,push"


def test_star_means_every_repository_action():
    assert parse_scope("repository:a:*").actions == {"pull", "push", "delete"}


def test_resource_class_is_accepted_and_dropped():
    assert parse_scope("repository(plugin):a/b:pull") == Scope(
        "repository", "a/b", frozenset({"pull"})
    )


def test_catalog_scope():
    assert parse_scope("registry:catalog:*") == Scope("registry", "catalog", frozenset({"*"}))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "repository",
        "repository:a",
        "repository::pull",
        "repository:a:",
        "repository:a:,",
        "repository:UPPER:pull",
        "repository:a/../b:pull",
        "repository:a:fly",
        "repository:a:pull,teleport",
        "image:a:pull",
        "registry:catalog:pull",
        "registry:other:*",
        "repository:" + "a" * 300 + ":pull",
        "repository:a:pull:push",
    ],
)
def test_malformed_scopes_are_refused(text):
    with pytest.raises(ScopeError):
        parse_scope(text)


@pytest.mark.parametrize(
    "text",
    # Names sorting before and after `catalog`, a longer name it begins, other actions.
    ["registry:aaa:*", "registry:other:*", "registry:catalogue:*", "registry:catalog:push"],
)
def test_only_the_catalog_is_a_registry_scope(text):
    with pytest.raises(ScopeError) as refused:
        parse_scope(text)
    assert str(refused.value) == f"scope {text!r}: only registry:catalog:* is known"


def test_several_scopes_merge_per_resource_and_split_on_spaces():
    scopes = parse_scopes(["repository:a:pull repository:b:push", "repository:a:push"])
    assert scopes == [
        Scope("repository", "a", frozenset({"pull", "push"})),
        Scope("repository", "b", frozenset({"push"})),
    ]


def test_intersection_keeps_only_allowed_actions_and_drops_empty_scopes():
    allowed = {"a": frozenset({"pull"}), "b": frozenset({"pull", "push", "delete"})}
    requested = parse_scopes(["repository:a:pull,push", "repository:b:push", "repository:c:pull"])
    granted = intersect(requested, lambda kind, name: allowed.get(name, frozenset()))
    assert granted == [
        Scope("repository", "a", frozenset({"pull"})),
        Scope("repository", "b", frozenset({"push"})),
    ]


def test_intersection_never_grants_more_than_asked():
    granted = intersect(
        parse_scopes(["repository:a:pull"]),
        lambda kind, name: frozenset({"pull", "push", "delete"}),
    )
    assert granted == [Scope("repository", "a", frozenset({"pull"}))]


def test_covers():
    granted = [Scope("repository", "a", frozenset({"pull"}))]
    assert covers(granted, "repository", "a", "pull")
    assert not covers(granted, "repository", "a", "push")
    assert not covers(granted, "repository", "b", "pull")
    assert not covers(granted, "repository", "a/b", "pull")


def test_covers_all_needs_every_action_on_that_very_resource():
    """A token's scopes for neighbours (names sorting before or after, a prefix, a longer name)
    and for the registry's catalog add nothing to what it grants on a repository."""
    token = parse_scopes(
        [
            "repository:team/app:pull",
            "repository:team/aaa:push,delete",
            "repository:team/zzz:push,delete",
            "repository:team/ap:push,delete",
            "repository:team/app2:push,delete",
            "registry:catalog:*",
        ]
    )
    assert covers_all(token, "repository", "team/app", ["pull"])
    assert not covers_all(token, "repository", "team/app", ["pull", "push"])
    assert not covers_all(token, "repository", "team/app", ["delete"])
    # A repository named like the catalog gets nothing from `registry:catalog:*`.
    assert not covers_all(token, "repository", "catalog", ["pull"])
    assert covers_all(token, "registry", "catalog", ["*"])
    assert not covers_all(parse_scopes(["repository:catalog:*"]), "registry", "catalog", ["*"])
    assert not covers_all([], "repository", "team/app", ["pull"])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("repository:a", "expected type:name:actions"),
        ("repository", "expected type:name:actions"),
        ("repository::pull", "invalid repository name"),
        ("repository:a:pull,teleport", "unknown actions ['teleport']"),
        ("image:a:pull", "unknown resource type 'image'"),
    ],
)
def test_malformed_scopes_say_why(text, reason):
    with pytest.raises(ScopeError) as refused:
        parse_scope(text)
    assert str(refused.value) == f"scope {text!r}: {reason}"


def test_a_name_of_the_longest_length_is_a_scope_and_one_more_is_not():
    longest = "a" * MAX_NAME_LENGTH
    assert parse_scope(f"repository:{longest}:pull").name == longest
    with pytest.raises(ScopeError) as refused:
        parse_scope(f"repository:{longest}a:pull")
    assert str(refused.value).endswith(": invalid repository name")


def test_covers_is_about_one_resource_type():
    token = parse_scopes(["repository:catalog:pull"])
    assert covers(token, "repository", "catalog", "pull")
    assert not covers(token, "registry", "catalog", "pull")
    assert not covers(parse_scopes(["registry:catalog:*"]), "repository", "catalog", "pull")
    # Neighbouring names, sorting before and after, grant nothing on this one.
    neighbours = parse_scopes(["repository:team/aaa:push", "repository:team/zzz:push"])
    assert not covers(neighbours, "repository", "team/app", "push")


def test_a_scope_is_bounded_however_long_its_resource_class():
    """The resource class is dropped, never checked: only the bound on the whole scope keeps a
    client from sending kilobytes of it."""
    bound = MAX_NAME_LENGTH + 64
    padding = bound - len("repository():a:pull")
    assert parse_scope(f"repository({'x' * padding}):a:pull") == Scope(
        "repository", "a", frozenset({"pull"})
    )
    for extra in (1, 10_000):
        with pytest.raises(ScopeError) as refused:
            parse_scope(f"repository({'x' * (padding + extra)}):a:pull")
        assert str(refused.value) == "scope too long"
