"""Repository and tag globs: `*` within one path segment, `**` across segments, `?` one character.

`prod/*` matches `prod/web` but not `prod/team/web`; `prod/**` matches both; `**/base` matches
`base`, `lib/base` and `a/b/base`. Tags have no `/`, so for them `*` and `**` mean the same.
Globs compile once, when the policy loads, to one anchored regular expression.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


def glob_to_regex(glob: str) -> str:
    """The regular expression (without anchors) equivalent to one glob."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class GlobSet:
    """Several globs; a name matches the set when it matches any of them."""

    globs: tuple[str, ...]
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, globs: Iterable[str]) -> GlobSet:
        """Compile `globs` into one matcher."""
        globs = tuple(globs)
        alternatives = "|".join(f"(?:{glob_to_regex(g)})" for g in globs) or "(?!)"
        return cls(globs, re.compile(f"(?:{alternatives})\\Z"))

    def matches(self, name: str) -> bool:
        """Whether `name` matches one of the globs."""
        return self.pattern.match(name) is not None

    def __str__(self) -> str:
        return ", ".join(self.globs)
