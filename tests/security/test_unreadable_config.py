"""An image whose config cannot be read (missing, malformed, too large) proves nothing about its
labels or platform: every rule that reads the config must deny it, never count it as allowed."""

from __future__ import annotations

import re

import pytest

from policies.decisions import Action
from policies.facts import Image, ImageFacts, PolicyRequest
from policies.rules import Context, Labels, Platforms

NEW = "sha256:" + "cd34" * 16
CHILD = "sha256:" + "ef56" * 16
OCI = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
SOURCE = {"org.opencontainers.image.source": re.compile("^https://git.example.com/")}


def ctx(tags: tuple[str, ...] = ("v1",), **image: object) -> Context:
    request = PolicyRequest(Action.PUSH, "prod/web", tags[0] if tags else NEW, NEW, tags)
    facts = ImageFacts(**{"digest": NEW, "media_type": OCI, **image})  # type: ignore[arg-type]
    return Context(request, facts, tags)


def test_labels_deny_an_unreadable_config_on_an_index_child() -> None:
    readable = Image(
        CHILD, "linux/amd64", 0, {"org.opencontainers.image.source": "https://git.example.com/a"}
    )
    unreadable = Image(NEW, "linux/arm64")
    decision = Labels(SOURCE).evaluate(
        ctx(media_type=INDEX, is_index=True, images=(readable, unreadable))
    )
    assert not decision.allowed
    assert decision.reason == "the image config on linux/arm64 could not be read to check labels"


@pytest.mark.parametrize("tags", [("v1",), ()], ids=["by-tag", "by-digest"])
def test_platforms_deny_an_unreadable_config(tags: tuple[str, ...]) -> None:
    # A config that cannot be read names no platform: with `allowed` set, "no platform found"
    # must not pass as "no platform outside the list".
    decision = Platforms((), ("linux/amd64",)).evaluate(ctx(tags=tags, images=(Image(NEW),)))
    assert not decision.allowed
    assert decision.reason == (
        "image sha256:cd34cd34cd34… declares no platform (os and architecture); cannot tell "
        "whether it is allowed (allowed: linux/amd64)"
    )
