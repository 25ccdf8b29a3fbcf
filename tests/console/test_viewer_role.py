"""The `viewer` role: reads the management API and the console on a rule covering every
repository, and gives no repository action at all."""

from __future__ import annotations

import pytest

from registry.auth.permissions import Permissions
from registry.config import ConfigError
from registry.identity import Identity
from tests.conftest import make_config

VERA = Identity("vera", "user", frozenset({"auditors"}))
OLGA = Identity("olga", "user", frozenset({"ops"}))
DEV = Identity("dev", "user", frozenset({"dev"}))


def permissions() -> Permissions:
    return Permissions.from_config(
        [
            {"namespace": "**", "groups": {"auditors": "viewer", "ops": "admin"}},
            {"namespace": "team/**", "users": {"dev": "viewer"}},
        ]
    )


def test_viewer_views_and_does_nothing_else():
    rules = permissions()
    assert rules.can_view(VERA) and not rules.is_admin(VERA)
    for action in ("pull", "push", "delete", "admin"):
        assert not rules.allows(VERA, "team/app", action)


def test_administrators_view_too():
    assert permissions().can_view(OLGA)


def test_viewer_on_part_of_the_registry_is_not_a_viewer():
    rules = permissions()
    assert not rules.can_view(DEV)
    assert rules.actions(DEV, "team/app") == frozenset({"view"})


def test_configuration_accepts_viewer_and_nothing_unknown(tmp_path):
    section = {"permissions": [{"namespace": "**", "users": {"vera": "viewer"}}]}
    assert make_config(tmp_path, auth=section).auth_enabled
    with pytest.raises(ConfigError):
        make_config(tmp_path, auth={"permissions": [{"namespace": "**", "users": {"v": "reader"}}]})
