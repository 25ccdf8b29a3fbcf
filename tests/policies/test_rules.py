"""Each rule type, evaluated on facts in memory: the decision and the reason's exact words."""

from __future__ import annotations

import re

import pytest

from policies.decisions import Action, Outcome
from policies.engine import MATCHES_REMEMBERED
from policies.facts import Image, ImageFacts, PolicyRequest, is_cosign_tag
from policies.loader import parse_policy
from policies.rules import (
    Annotations,
    Context,
    Deny,
    ImmutableTags,
    Labels,
    Match,
    MaxSize,
    MediaTypes,
    Platforms,
    TagPattern,
    format_size,
    parse_size,
)
from shared.globs import GlobSet
from storage.oci.image_kind import Kind

OLD = "sha256:" + "ab12" * 16
NEW = "sha256:" + "cd34" * 16
SIG_TAG = "sha256-" + "ab12" * 16 + ".sig"
OCI = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER = "application/vnd.docker.distribution.manifest.v2+json"


def ctx(
    action: Action = Action.PUSH,
    tags: tuple[str, ...] = ("v1.2.0",),
    reference: str | None = None,
    **image: object,
) -> Context:
    request = PolicyRequest(action, "prod/web", reference or (tags[0] if tags else NEW), NEW, tags)
    facts = ImageFacts(**{"digest": NEW, "media_type": OCI, **image})  # type: ignore[arg-type]
    return Context(request, facts, tags)


# -- immutable_tags


def test_immutable_tag_cannot_move() -> None:
    decision = ImmutableTags().evaluate(ctx(tag_targets={"v1.2.0": OLD}))
    assert not decision.allowed
    assert decision.reason == "tag v1.2.0 already points to sha256:ab12ab12ab12…; push a new tag"


def test_immutable_tag_new_or_same_manifest_is_fine() -> None:
    assert ImmutableTags().evaluate(ctx()).allowed
    assert ImmutableTags().evaluate(ctx(tag_targets={"v1.2.0": NEW})).allowed
    assert ImmutableTags().evaluate(ctx(tags=())).allowed


def test_immutable_tag_cannot_be_deleted() -> None:
    decision = ImmutableTags().evaluate(ctx(Action.DELETE))
    assert decision.reason == "tag v1.2.0 is immutable and cannot be deleted"
    by_digest = ImmutableTags().evaluate(ctx(Action.DELETE, reference=NEW))
    assert not by_digest.allowed
    assert by_digest.reason.endswith("(it points to sha256:cd34cd34cd34…)")


def test_cosign_tags_are_exempt() -> None:
    assert is_cosign_tag(SIG_TAG)
    assert is_cosign_tag(SIG_TAG.replace(".sig", ".att"))
    assert not is_cosign_tag("sha256-abc.sig")
    signature = {"kind": Kind.SIGNATURE}
    moved = {"tag_targets": {SIG_TAG: OLD}}
    assert ImmutableTags().evaluate(ctx(tags=(SIG_TAG,), **moved, **signature)).allowed
    assert TagPattern(re.compile(r"^v\d")).evaluate(ctx(tags=(SIG_TAG,), **signature)).allowed
    # The spelling alone exempts nothing: an image under a cosign-looking tag is judged.
    assert not ImmutableTags().evaluate(ctx(tags=(SIG_TAG,), **moved)).allowed
    assert not TagPattern(re.compile(r"^v\d")).evaluate(ctx(tags=(SIG_TAG,))).allowed


def test_immutable_tags_ignore_pulls() -> None:
    assert ImmutableTags().evaluate(ctx(Action.PULL)).allowed


# -- tag_pattern


def test_tag_pattern() -> None:
    rule = TagPattern(re.compile(r"^v\d+\.\d+\.\d+$"))
    assert rule.evaluate(ctx()).allowed
    decision = rule.evaluate(ctx(tags=("nightly",)))
    assert decision.reason == r"tag nightly does not match the allowed pattern ^v\d+\.\d+\.\d+$"


# -- labels and annotations

SOURCE = {"org.opencontainers.image.source": re.compile("^https://git.example.com/")}


def test_labels_present_and_matching() -> None:
    image = Image(
        NEW, "linux/amd64", 10, {"org.opencontainers.image.source": "https://git.example.com/x"}
    )
    assert Labels(SOURCE).evaluate(ctx(images=(image,))).allowed


def test_labels_missing() -> None:
    decision = Labels(SOURCE).evaluate(ctx(images=(Image(NEW, None, 0, {}),)))
    assert decision.reason == (
        "label org.opencontainers.image.source missing; set it with LABEL in the Dockerfile"
    )


def test_labels_wrong_value_on_an_index_child() -> None:
    good = Image(
        "sha256:1",
        "linux/amd64",
        0,
        {"org.opencontainers.image.source": "https://git.example.com/a"},
    )
    bad = Image("sha256:2", "linux/arm64", 0, {"org.opencontainers.image.source": "https://evil/a"})
    decision = Labels(SOURCE).evaluate(ctx(is_index=True, images=(good, bad)))
    assert decision.reason == (
        "label org.opencontainers.image.source='https://evil/a' does not match "
        "^https://git.example.com/ on linux/arm64; set it with LABEL in the Dockerfile"
    )


def test_labels_unreadable_config_and_artifacts() -> None:
    decision = Labels(SOURCE).evaluate(ctx(images=(Image(NEW),)))
    assert not decision.allowed
    assert decision.reason == "the image config could not be read to check labels"
    decision = Labels(SOURCE).evaluate(ctx(images=()))
    assert not decision.allowed
    assert decision.reason == "the image's config could not be read to check its labels"
    artifact = ctx(is_artifact=True, kind_reason="a cosign signature, not an image")
    decision = Labels(SOURCE).evaluate(artifact)
    assert decision.allowed
    assert decision.reason == "a cosign signature, not an image; labels do not apply"


def test_annotations() -> None:
    rule = Annotations({"org.opencontainers.image.revision": re.compile("^[0-9a-f]{40}$")})
    assert rule.evaluate(ctx(annotations={"org.opencontainers.image.revision": "a" * 40})).allowed
    assert (
        rule.evaluate(ctx()).reason
        == "manifest annotation org.opencontainers.image.revision missing"
    )


# -- platforms


def test_platforms_required_on_an_index() -> None:
    rule = Platforms(("linux/amd64", "linux/arm64"), None)
    assert rule.evaluate(ctx(is_index=True, platforms=("linux/amd64", "linux/arm64"))).allowed
    decision = rule.evaluate(ctx(is_index=True, platforms=("linux/amd64",)))
    assert decision.reason == (
        "platform linux/arm64 missing (this index has linux/amd64); push a multi-platform "
        "index with linux/amd64, linux/arm64"
    )


def test_platforms_single_image_by_tag_and_by_digest() -> None:
    rule = Platforms(("linux/amd64", "linux/arm64"), None)
    single = (Image(NEW, "linux/amd64"),)
    assert "single-platform image" in rule.evaluate(ctx(images=single)).reason
    # An index's children are pushed by digest, before the index: they pass.
    assert rule.evaluate(ctx(tags=(), images=single)).allowed


def test_platforms_allowed() -> None:
    rule = Platforms((), ("linux/amd64",))
    decision = rule.evaluate(ctx(tags=(), images=(Image(NEW, "windows/amd64"),)))
    assert decision.reason == "platform windows/amd64 is not allowed (allowed: linux/amd64)"


# -- media_types, max_size, deny


def test_media_types() -> None:
    assert MediaTypes(("oci",)).evaluate(ctx()).allowed
    assert MediaTypes(("oci",)).evaluate(ctx(media_type=INDEX)).allowed
    decision = MediaTypes(("oci",)).evaluate(ctx(media_type=DOCKER))
    assert decision.reason == f"media type {DOCKER} is not allowed (allowed: oci)"
    assert MediaTypes((DOCKER,)).evaluate(ctx(media_type=DOCKER)).allowed


def test_max_size() -> None:
    assert MaxSize(100).evaluate(ctx(images=(Image(NEW, None, 100),))).allowed
    decision = MaxSize(parse_size("1MiB")).evaluate(ctx(images=(Image(NEW, None, 3 << 20),)))
    assert decision.reason == "image is 3.0 MiB, over the 1.0 MiB limit"
    index = ctx(
        is_index=True, images=(Image("a", "linux/amd64", 1), Image("b", "linux/arm64", 5000))
    )
    assert (
        MaxSize(1024).evaluate(index).reason
        == "image (linux/arm64) is 4.9 KiB, over the 1.0 KiB limit"
    )


@pytest.mark.parametrize(
    ("text", "size"), [("2GiB", 2 << 30), ("500MB", 500_000_000), ("1.5 KiB", 1536), ("7", 7)]
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_format_size() -> None:
    assert format_size(10) == "10 B"
    assert format_size(2 << 30) == "2.0 GiB"


def test_deny() -> None:
    decision = Deny("use a version tag, not latest").evaluate(ctx())
    assert not decision.allowed and decision.reason == "use a version tag, not latest"


# -- matching and the engine


def test_match_tags_and_excludes() -> None:
    match = Match(
        repositories=GlobSet.of(["prod/**"]),
        actions=frozenset({Action.PUSH}),
        tags=GlobSet.of(["v*"]),
        exclude_repositories=GlobSet.of(["prod/sandbox/**"]),
        exclude_tags=GlobSet.of(["*-rc*"]),
    )

    def applies(repository: str, tags: tuple[str, ...], action: Action = Action.PUSH) -> object:
        return match.applies(PolicyRequest(action, repository, "r", NEW, tags))

    assert applies("prod/web", ("v1", "latest")) == ("v1",)
    assert applies("prod/web", ("latest",)) is None
    assert applies("prod/web", ()) is None
    assert applies("prod/sandbox/x", ("v1",)) is None
    assert applies("prod/web", ("v1-rc1",)) is None
    assert applies("dev/web", ("v1",)) is None
    assert applies("prod/web", ("v1",), Action.PULL) is None


def test_match_without_tags_covers_tagless_requests() -> None:
    match = Match(
        GlobSet.of(["**"]), frozenset({Action.PUSH}), exclude_tags=GlobSet.of(["sha256-*"])
    )
    assert match.applies(PolicyRequest(Action.PUSH, "a", NEW, NEW, ())) == ()
    assert match.applies(PolicyRequest(Action.PUSH, "a", SIG_TAG, NEW, (SIG_TAG,))) is None


MATCHED = """\
version: 1
rules:
  - name: prod releases
    match: {repositories: ["prod/**"], tags: ["v*"], exclude: {tags: ["*-rc*"]}, on: [push]}
    require: {immutable_tags: true}
  - name: prod pushes
    match:
      repositories: ["prod/**"]
      exclude: {repositories: ["prod/sandbox/**"]}
      on: [push]
    require: {max_size: 1GiB}
"""


def test_matching_remembers_repositories_but_decides_each_requests_tags() -> None:
    # The rules that may apply are remembered by (action, repository): the tags of every
    # request are still matched, and what another repository or action gets is its own.
    policy = parse_policy(MATCHED)

    def names(repository: str, tags: tuple[str, ...], action: Action = Action.PUSH) -> list:
        request = PolicyRequest(action, repository, "r", NEW, tags)
        return [(rule.name, concerned) for rule, concerned in policy.matching(request)]

    for _ in range(2):  # the second round is answered by what the first remembered
        assert names("prod/web", ("v1", "latest")) == [
            ("prod releases", ("v1",)),
            ("prod pushes", ("v1", "latest")),
        ]
        assert names("prod/web", ("latest",)) == [("prod pushes", ("latest",))]
        assert names("prod/web", ("v1-rc1",)) == [("prod pushes", ("v1-rc1",))]
        assert names("prod/sandbox/x", ("v2",)) == [("prod releases", ("v2",))]
        assert names("prod/web", ("v1",), Action.PULL) == []
        assert names("dev/web", ("v1",)) == []


def test_a_reloaded_policy_matches_by_its_own_rules_at_once() -> None:
    old = parse_policy(MATCHED)
    request = PolicyRequest(Action.PUSH, "prod/web", "v1", NEW, ("v1",))
    assert [rule.name for rule, _ in old.matching(request)] == ["prod releases", "prod pushes"]
    new = parse_policy(MATCHED.replace('["prod/**"], tags', '["dev/**"], tags'))
    assert [rule.name for rule, _ in new.matching(request)] == ["prod pushes"]
    dev = PolicyRequest(Action.PUSH, "dev/web", "v1", NEW, ("v1",))
    assert [rule.name for rule, _ in new.matching(dev)] == ["prod releases"]
    assert old.matching(dev) == []


def test_what_matching_remembers_is_bounded() -> None:
    policy = parse_policy(MATCHED)
    for n in range(MATCHES_REMEMBERED + 10):
        request = PolicyRequest(Action.PUSH, f"prod/r{n}", "v1", NEW, ("v1",))
        assert len(policy.matching(request)) == 2
    assert len(policy._rules_by_repository) <= MATCHES_REMEMBERED


POLICY = """\
version: 1
rules:
  - name: release tags are immutable
    match: {repositories: ["**"], tags: ["v*"], on: [push]}
    require: {immutable_tags: true}
  - name: no latest in prod
    match: {repositories: ["prod/**"], tags: ["latest"], on: [push]}
    deny: "use a version tag, not latest"
  - name: prod is oci
    mode: warn
    match: {repositories: ["prod/**"], on: [push]}
    require: {media_types: [oci]}
"""


def test_every_matching_rule_must_hold() -> None:
    policy = parse_policy(POLICY)
    request = PolicyRequest(Action.PUSH, "prod/web", "v1.2.0", NEW, ("v1.2.0",))
    verdict = policy.evaluate(request, ImageFacts(NEW, OCI, tag_targets={"v1.2.0": OLD}))
    assert verdict.outcome is Outcome.DENY
    assert verdict.rule == "release tags are immutable"
    assert verdict.reason == (
        'rule "release tags are immutable": tag v1.2.0 already points to '
        "sha256:ab12ab12ab12…; push a new tag"
    )
    assert [r.rule for r in verdict.rules] == ["release tags are immutable", "prod is oci"]


def test_warn_mode_rule_fails_into_warn() -> None:
    policy = parse_policy(POLICY)
    request = PolicyRequest(Action.PUSH, "prod/web", "v2", NEW, ("v2",))
    verdict = policy.evaluate(request, ImageFacts(NEW, DOCKER))
    assert verdict.outcome is Outcome.WARN
    assert verdict.reason.startswith('rule "prod is oci": media type')


def test_global_warn_mode() -> None:
    policy = parse_policy("mode: warn\n" + POLICY)
    request = PolicyRequest(Action.PUSH, "prod/web", "latest", NEW, ("latest",))
    verdict = policy.evaluate(request, ImageFacts(NEW, OCI))
    assert verdict.outcome is Outcome.WARN


def test_allowed_reason_names_the_rules_that_held() -> None:
    policy = parse_policy(POLICY)
    request = PolicyRequest(Action.PUSH, "dev/web", "v1", NEW, ("v1",))
    verdict = policy.evaluate(request, ImageFacts(NEW, OCI))
    assert verdict.outcome is Outcome.ALLOW
    assert verdict.reason == 'every matching rule holds: "release tags are immutable"'
    nothing = policy.evaluate(
        PolicyRequest(Action.PULL, "dev/web", "v1", NEW), ImageFacts(NEW, OCI)
    )
    assert nothing.reason == "no rule matches"
