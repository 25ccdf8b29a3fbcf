"""Repository and tag globs."""

from __future__ import annotations

import pytest

from shared.globs import GlobSet


@pytest.mark.parametrize(
    ("glob", "name", "expected"),
    [
        ("**", "a", True),
        ("**", "a/b/c", True),
        ("prod/*", "prod/web", True),
        ("prod/*", "prod/team/web", False),
        ("prod/**", "prod/team/web", True),
        ("prod/**", "prod", False),
        ("prod/**", "production/web", False),
        ("**/base", "base", True),
        ("**/base", "lib/x/base", True),
        ("**/base", "lib/database", False),
        ("v*", "v1.2.0", True),
        ("v*", "latest", False),
        ("v?", "v1", True),
        ("v?", "v10", False),
        ("a.b", "axb", False),
        ("team-[x]", "team-[x]", True),
    ],
)
def test_glob(glob: str, name: str, expected: bool) -> None:
    assert GlobSet.of([glob]).matches(name) is expected


def test_any_of_several() -> None:
    globs = GlobSet.of(["prod/**", "staging/*"])
    assert globs.matches("staging/web")
    assert globs.matches("prod/a/b")
    assert not globs.matches("dev/web")
    assert str(globs) == "prod/**, staging/*"
