"""The `base_image` rule's time limits: an allow says when `supported_until` or `max_behind` runs
out (`valid_until`), so a cached pull decision does not outlive them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from policies.base_image_rule import BaseImage
from policies.decisions import Action
from policies.facts import ImageFacts, PolicyRequest
from policies.library.declaration import Library
from policies.library.lineage import Candidate, ImageLayers, Lineage
from policies.rules import Context

LIBRARY = Library.from_section(
    {
        "images": [
            {"name": "python", "tags": ["3.12-slim"], "supported_until": "2027-10-31"},
            {"name": "static", "tags": ["nonroot"]},
        ]
    }
)
NOW = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
END_OF_SUPPORT = datetime(2027, 11, 1, tzinfo=UTC).timestamp()  # the first moment after the day
DAY = 86400.0


def built_on(name: str, tag: str, replaced_at: float | None = None) -> ImageFacts:
    """An image built on the library's `name:tag` (replaced at `replaced_at`, if given)."""
    base = ImageLayers("sha256:base", "linux/amd64", ("sha256:l1",))
    image = ImageLayers("sha256:app", "linux/amd64", ("sha256:l1", "sha256:l2"))
    candidate = Candidate(
        name,
        tag,
        f"library/{name}",
        "sha256:base",
        base,
        current=replaced_at is None,
        since=NOW - 100 * DAY,
        replaced_at=replaced_at,
    )
    return ImageFacts("sha256:app", "", lineage=(Lineage(image, candidate, 1),))


def decide(rule: BaseImage, image: ImageFacts, now: float = NOW) -> tuple[bool, float | None]:
    """Whether `rule` allows a pull of `image` at `now`, and until when."""
    request = PolicyRequest(Action.PULL, "apps/web", "v1", image.digest)
    decision = replace(rule, clock=lambda: now).evaluate(Context(request, image, ()))
    return decision.allowed, decision.valid_until


def test_supported_until_bounds_an_allow_when_deprecated_bases_are_refused() -> None:
    strict = BaseImage(LIBRARY, allow_deprecated=False)
    assert decide(strict, built_on("python", "3.12-slim")) == (True, END_OF_SUPPORT)
    assert decide(strict, built_on("python", "3.12-slim"), END_OF_SUPPORT) == (False, None)
    # Deprecated bases allowed, or no supported_until: time alone changes nothing.
    assert decide(BaseImage(LIBRARY), built_on("python", "3.12-slim")) == (True, None)
    assert decide(strict, built_on("static", "nonroot")) == (True, None)


def test_max_behind_bounds_an_allow_on_a_replaced_base() -> None:
    rule = BaseImage(LIBRARY, max_behind=30 * DAY, max_behind_text="30d")
    replaced = NOW - 10 * DAY
    assert decide(rule, built_on("static", "nonroot", replaced)) == (True, replaced + 30 * DAY)
    assert decide(rule, built_on("static", "nonroot", replaced), replaced + 31 * DAY)[0] is False
    # A current base has not been replaced yet: only a push moving its tag can change that.
    assert decide(rule, built_on("static", "nonroot")) == (True, None)


def test_the_earliest_limit_wins() -> None:
    rule = BaseImage(LIBRARY, allow_deprecated=False, max_behind=400 * DAY, max_behind_text="400d")
    replaced = NOW - 10 * DAY
    assert decide(rule, built_on("python", "3.12-slim", replaced)) == (True, END_OF_SUPPORT)
    rule = BaseImage(LIBRARY, allow_deprecated=False, max_behind=30 * DAY, max_behind_text="30d")
    assert decide(rule, built_on("python", "3.12-slim", replaced)) == (True, replaced + 30 * DAY)
