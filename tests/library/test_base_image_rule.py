"""The `base_image` rule's time limits: an allow says when `supported_until` or `max_behind` runs
out (`valid_until`), so a cached pull decision does not outlive them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

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


SIGNED = Library.from_section(
    {"images": [{"name": "python", "tags": ["3.12-slim"], "signed_by": ["ops"]}]}
)
APP = ImageLayers("sha256:app", "linux/amd64", ("sha256:l1", "sha256:l2"))


def on(
    name: str, tag: str, *, pending: bool = False, library: Library = LIBRARY
) -> tuple[BaseImage, ImageFacts]:
    """An image built on `name:tag` (pushed to the tag but unsigned when `pending`)."""
    base = ImageLayers("sha256:base", "linux/amd64", ("sha256:l1",))
    candidate = Candidate(
        name, tag, f"library/{name}", "sha256:base", base, True, NOW - DAY, pending=pending
    )
    return BaseImage(library), ImageFacts("sha256:app", "", lineage=(Lineage(APP, candidate, 1),))


def judged(rule: BaseImage, image: ImageFacts, now: float = NOW) -> tuple[bool, str, float | None]:
    """The decision of `rule` on a pull of `image` at `now`: allowed, reason, until when."""
    request = PolicyRequest(Action.PULL, "apps/web", "v1", image.digest)
    decision = replace(rule, clock=lambda: now).evaluate(Context(request, image, ()))
    return decision.allowed, decision.reason, decision.valid_until


def test_an_image_whose_layers_could_not_be_read_is_refused_while_from_library() -> None:
    unread = ImageFacts("sha256:app", "", lineage=())
    assert judged(BaseImage(LIBRARY), unread) == (
        False,
        "the image's layers could not be read to find what it is built on",
        None,
    )
    lenient = BaseImage(LIBRARY, from_library=False, allow_deprecated=False)
    assert judged(lenient, unread) == (True, "no platform image to check", None)


def test_a_base_on_a_tag_or_image_no_longer_declared_is_refused_while_from_library() -> None:
    for name, tag in (("python", "3.11-slim"), ("gone", "1")):
        rule, image = on(name, tag)
        assert judged(rule, image) == (
            False,
            f"image is built on {name}:{tag}, which is no longer declared in the library; "
            "rebuild on a library image",
            None,
        )
        # Without from_library only declared bases are held to their limits: no time limit.
        lenient = replace(rule, from_library=False, allow_deprecated=False)
        assert judged(lenient, image) == (True, f"built on {name}:{tag}", None)


def test_an_unsigned_base_is_refused_while_from_library() -> None:
    rule, image = on("python", "3.12-slim", pending=True, library=SIGNED)
    assert judged(rule, image) == (
        False,
        "image is built on python:3.12-slim@sha256:base, which is not signed by ops "
        "(signed_by), so not a library image yet; sign it or rebuild on the library's current "
        "python:3.12-slim",
        None,
    )
    lenient = replace(rule, from_library=False, allow_deprecated=False)
    assert judged(lenient, image) == (True, "built on python:3.12-slim", None)


def test_an_image_on_no_library_base_has_no_time_limit() -> None:
    candidate = Candidate(
        "python",
        "3.12-slim",
        "library/python",
        "sha256:base",
        ImageLayers("sha256:base", "linux/amd64", ("sha256:other",)),
        True,
        NOW - DAY,
    )
    image = ImageFacts("sha256:app", "", lineage=(Lineage(APP, None, 0, candidate),))
    lenient = BaseImage(LIBRARY, from_library=False, allow_deprecated=False)
    assert judged(lenient, image) == (
        True,
        "not built on a library image; only library bases are checked",
        None,
    )


def test_max_behind_refuses_from_the_instant_the_allow_ended() -> None:
    rule = BaseImage(LIBRARY, max_behind=DAY, max_behind_text="1d")
    replaced = NOW - 10 * DAY
    image = built_on("static", "nonroot", replaced)
    allowed, _, until = judged(rule, image, replaced + DAY - 1)
    assert (allowed, until) == (True, replaced + DAY)
    assert judged(rule, image, replaced + DAY) == (
        False,
        "image is built on static:nonroot@sha256:base which was replaced 1 day ago "
        "(max_behind 1d); rebuild",
        None,
    )


@pytest.mark.parametrize(
    ("behind", "words"),
    [(DAY, "1 day"), (2 * DAY + 5, "2 days"), (5 * 3600, "5 hours"), (3600, "1 hour")],
)
def test_a_refusal_says_how_long_ago_the_base_was_replaced(behind: float, words: str) -> None:
    rule = BaseImage(LIBRARY, max_behind=60.0, max_behind_text="1m")
    image = built_on("static", "nonroot", NOW - behind)
    assert judged(rule, image)[1] == (
        f"image is built on static:nonroot@sha256:base which was replaced {words} ago "
        "(max_behind 1m); rebuild"
    )
