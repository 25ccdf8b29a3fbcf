"""What `AuthService.allowed` grants on resources outside the two it knows.

`allowed` is where a token's scopes and every request's permissions are derived: it answers for
any resource it is asked about. Today's callers ask only for `repository:<name>` and for
`registry:catalog` (the scope parser refuses everything else), but the grant of everything (`*`)
must stay tied to the catalog itself: a registry resource named differently, or a resource type
that sorts near the known ones, grants nothing to anyone, however much they may do elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.auth.service import AuthService
from registry.auth.settings import AuthSettings
from registry.identity import ANONYMOUS, Identity
from tests.auth.conftest import auth_section, write_accounts
from tests.conftest import make_config

ADMIN = Identity("olga", "user", frozenset({"ops"}))


@pytest.fixture
def service(data_dir: Path) -> AuthService:
    write_accounts(data_dir)
    return AuthService(AuthSettings.from_config(make_config(data_dir, auth=auth_section())))


def test_the_catalog_is_granted_whole_and_repositories_by_permission(service: AuthService) -> None:
    assert service.allowed(ADMIN, "registry", "catalog") == {"*"}
    # Anonymous callers may pull library/** in the tests' rules, so they may list the catalog.
    assert service.allowed(ANONYMOUS, "registry", "catalog") == {"*"}
    assert service.allowed(ADMIN, "repository", "team-a/app") == {"pull", "push", "delete"}
    assert service.allowed(ANONYMOUS, "repository", "library/base") == {"pull"}


@pytest.mark.parametrize(
    "name", ["catalo", "catalof", "catalog0", "catalogue", "cat", "z", "a", ""]
)
def test_no_registry_resource_but_the_catalog_grants_anything(
    service: AuthService, name: str
) -> None:
    assert service.allowed(ADMIN, "registry", name) == frozenset()
    assert service.allowed(ANONYMOUS, "registry", name) == frozenset()


@pytest.mark.parametrize("resource_type", ["reg", "registrx", "registryz", "repositorz", "zzz", ""])
def test_an_unknown_resource_type_grants_nothing(service: AuthService, resource_type: str) -> None:
    assert service.allowed(ADMIN, resource_type, "catalog") == frozenset()
    assert service.allowed(ADMIN, resource_type, "team-a/app") == frozenset()
