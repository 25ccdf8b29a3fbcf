"""What an index says about its images against what the images say: a child listed under an
allowed platform whose own config names another (clients pick by the index, then run what the
config says), in either direction, and size limits named for the image they concern.

Judged through the requirements' public `evaluate`, on facts as the engine gathers them.
"""

from __future__ import annotations

import pytest

from policies.decisions import Action, Decision
from policies.facts import Image, ImageFacts, PolicyRequest
from policies.rules import Context, MaxSize, Platforms

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DIGEST = "sha256:" + "9f" * 32
CHILD = "sha256:" + "c0" * 32


def judge(rule: Platforms | MaxSize, *images: Image, is_index: bool = True) -> Decision:
    facts = ImageFacts(
        DIGEST,
        INDEX if is_index else MANIFEST,
        is_index=is_index,
        images=images,
        platforms=tuple(i.platform for i in images if i.platform),
    )
    request = PolicyRequest(Action.PUSH, "prod/app", "v1", DIGEST, ("v1",))
    return rule.evaluate(Context(request, facts, ("v1",)))


@pytest.mark.parametrize(
    ("listed", "own"),
    [
        ("linux/amd64", "windows/amd64"),  # the config's sorts after the listed platform
        ("linux/arm64", "linux/amd64"),  # and before it
        ("linux/amd64", "linux/arm64"),
        ("windows/amd64", "linux/amd64"),
    ],
)
def test_a_child_whose_config_names_another_platform_is_refused(listed: str, own: str) -> None:
    rule = Platforms((), ("linux/amd64", "linux/arm64", "windows/amd64"))
    decision = judge(rule, Image(CHILD, listed, 10, {}, own))
    assert not decision.allowed
    assert decision.reason == (
        f"child sha256:c0c0c0c0c0c0… is listed as {listed} but its config says {own}"
    )


def test_a_variant_alone_does_not_make_another_platform() -> None:
    rule = Platforms((), ("linux/arm64/v8",))
    decision = judge(rule, Image(CHILD, "linux/arm64/v8", 10, {}, "linux/arm64"))
    assert decision.allowed, decision.reason


def test_a_size_limit_names_the_platform_only_of_an_index_child() -> None:
    single = judge(MaxSize(1024), Image(DIGEST, "linux/amd64", 4096), is_index=False)
    assert not single.allowed
    assert single.reason == "image is 4.0 KiB, over the 1.0 KiB limit"
    child = judge(MaxSize(1024), Image(CHILD, "linux/amd64", 4096))
    assert child.reason == "image (linux/amd64) is 4.0 KiB, over the 1.0 KiB limit"
    unnamed = judge(MaxSize(1024), Image(CHILD, None, 4096))
    assert unnamed.reason == "image is 4.0 KiB, over the 1.0 KiB limit"
    assert judge(MaxSize(4096), Image(CHILD, "linux/amd64", 4096)).allowed
