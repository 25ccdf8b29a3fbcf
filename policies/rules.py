"""The rule types: small objects whose `evaluate(context) -> Decision` says in words what was
expected and what was found.

A `Rule` is a name, a `Match` (which requests it applies to) and requirements, every one of which
must hold (AND). Requirements see a `Context`: the request, the image's facts, and the tags the
rule matched. Reasons are written for the person who ran `docker push`; they are printed after
`denied: rule "<name>": `.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Protocol

from policies.decisions import Action, Decision, RuleVerdict
from policies.facts import (
    CHILDREN,
    CONFIG,
    MANIFEST,
    TAG_TARGETS,
    ImageFacts,
    PolicyRequest,
    is_cosign_tag,
)
from shared.globs import GlobSet
from storage.oci.image_kind import Kind


@dataclass(frozen=True, slots=True)
class Context:
    """What a requirement evaluates: the request, the image, and the tags its rule matched."""

    request: PolicyRequest
    image: ImageFacts
    tags: tuple[str, ...]


class Requirement(Protocol):
    """One condition of a rule."""

    needs: ClassVar[frozenset[str]]

    def evaluate(self, context: Context) -> Decision:
        """Whether the condition holds for `context`, and why."""
        ...


def short(digest: str) -> str:
    """`sha256:ab12cd34ef56…`: enough of a digest to recognise it in a message."""
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}:{hex_part[:12]}…" if len(hex_part) > 12 else digest


def format_size(size: int) -> str:
    """A byte count in the largest binary unit that keeps it readable (`1.5 GiB`)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*")
_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}


def parse_size(value: int | str) -> int:
    """`2GiB`, `500MB`, `1024` in bytes."""
    if isinstance(value, int):
        return value
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"not a size: {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def signature_tag(tag: str, image: ImageFacts) -> bool:
    """Whether `tag` is a cosign signature tag that holds a signature: the spelling alone
    exempts nothing (`storage.oci.image_kind` decides by structure)."""
    return is_cosign_tag(tag) and image.kind is Kind.SIGNATURE


# -- requirements ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImmutableTags:
    """A matching tag, once it points at a manifest, never moves and is never deleted.

    Re-pushing the same manifest to the tag is allowed (clients retry). cosign's
    `sha256-<hex>.sig|.att` tags are exempt while they hold a signature (by structure): cosign
    moves them when it adds a signature.
    """

    needs: ClassVar[frozenset[str]] = frozenset({TAG_TARGETS})

    def evaluate(self, context: Context) -> Decision:
        """Deny moving or deleting a matching tag."""
        tags = [t for t in context.tags if not signature_tag(t, context.image)]
        if not tags:
            return Decision.allow("no immutable tag concerned")
        action = context.request.action
        if action is Action.PUSH:
            for tag in tags:
                current = context.image.tag_targets.get(tag)
                if current is not None and current != context.image.digest:
                    return Decision.deny(
                        f"tag {tag} already points to {short(current)}; push a new tag"
                    )
            return Decision.allow(f"tag {', '.join(tags)} is new or unchanged")
        if action is Action.DELETE:
            return Decision.deny(
                f"tag {', '.join(tags)} is immutable and cannot be deleted"
                + (
                    ""
                    if context.request.reference in tags
                    else f" (it points to {short(context.image.digest)})"
                )
            )
        return Decision.allow("immutability only concerns push and delete")


@dataclass(frozen=True)
class TagPattern:
    """Every matching tag must match a regular expression (cosign tags holding a signature are
    exempt)."""

    pattern: re.Pattern[str]
    needs: ClassVar[frozenset[str]] = frozenset()

    def evaluate(self, context: Context) -> Decision:
        """Deny a tag that does not match the pattern."""
        for tag in context.tags:
            if not signature_tag(tag, context.image) and self.pattern.search(tag) is None:
                return Decision.deny(
                    f"tag {tag} does not match the allowed pattern {self.pattern.pattern}"
                )
        return Decision.allow(f"tags match {self.pattern.pattern}")


def _missing_or_wrong(
    kind: str, wanted: Mapping[str, re.Pattern[str]], found: Mapping[str, str]
) -> str | None:
    """What is wrong with `found` against `wanted`, in words, or None when all is well."""
    missing = [key for key in wanted if key not in found]
    if missing:
        return f"{kind} {', '.join(missing)} missing"
    for key, pattern in wanted.items():
        if pattern.search(found[key]) is None:
            return f"{kind} {key}={found[key]!r} does not match {pattern.pattern}"
    return None


@dataclass(frozen=True)
class Labels:
    """The image config must carry these labels, each value matching its regex.

    For an index, every child image must. Signatures (by structure) and artifact types the
    policy exempts are not checked.
    """

    labels: Mapping[str, re.Pattern[str]]
    needs: ClassVar[frozenset[str]] = frozenset({CONFIG, CHILDREN})

    def evaluate(self, context: Context) -> Decision:
        """Deny an image whose config lacks a label or whose label value does not match."""
        image = context.image
        if image.is_artifact:
            return Decision.allow(f"{image.kind_reason}; labels do not apply")
        if not image.images:
            return Decision.deny("the image's config could not be read to check its labels")
        for child in image.images:
            where = f" on {child.platform or short(child.digest)}" if image.is_index else ""
            if child.labels is None:
                return Decision.deny(f"the image config{where} could not be read to check labels")
            problem = _missing_or_wrong("label", self.labels, child.labels)
            if problem is not None:
                return Decision.deny(f"{problem}{where}; set it with LABEL in the Dockerfile")
        return Decision.allow(f"labels {', '.join(self.labels)} present")


@dataclass(frozen=True)
class Annotations:
    """The manifest must carry these annotations, each value matching its regex."""

    annotations: Mapping[str, re.Pattern[str]]
    needs: ClassVar[frozenset[str]] = frozenset()

    def evaluate(self, context: Context) -> Decision:
        """Deny a manifest lacking an annotation or whose annotation value does not match."""
        problem = _missing_or_wrong("annotation", self.annotations, context.image.annotations)
        if problem is not None:
            return Decision.deny(f"manifest {problem}")
        return Decision.allow(f"annotations {', '.join(self.annotations)} present")


@dataclass(frozen=True)
class Platforms:
    """Which platforms a tagged index must contain (`required`) and may contain (`allowed`).

    A single-platform image pushed by tag does not satisfy `required`; pushed by digest (as the
    children of an index are) it is only checked against `allowed`.
    """

    required: tuple[str, ...]
    allowed: tuple[str, ...] | None
    needs: ClassVar[frozenset[str]] = frozenset({CONFIG, CHILDREN})

    def evaluate(self, context: Context) -> Decision:
        """Deny a missing required platform or a platform that is not allowed."""
        image = context.image
        if image.is_artifact:
            return Decision.allow(f"{image.kind_reason}; platforms do not apply")
        if image.is_index and not image.images:
            present = list(image.platforms)  # an empty index: nothing to run
            unknown: list[str] = []
        else:
            # An index child without a platform in the index is chosen by its config's.
            present = list(dict.fromkeys(i.platform for i in image.images if i.platform))
            unknown = [short(i.digest) for i in image.images if i.platform is None]
        for child in image.images:
            listed, own = child.platform, child.config_platform
            if listed and own and listed.split("/")[:2] != own.split("/")[:2]:
                return Decision.deny(
                    f"child {short(child.digest)} is listed as {listed} but its config says {own}"
                )
        if self.allowed is not None:
            if unknown:
                return Decision.deny(
                    f"image {unknown[0]} declares no platform (os and architecture); cannot "
                    f"tell whether it is allowed (allowed: {', '.join(self.allowed)})"
                )
            extra = [p for p in present if p not in self.allowed]
            if extra:
                return Decision.deny(
                    f"platform {', '.join(extra)} is not allowed (allowed: "
                    f"{', '.join(self.allowed)})"
                )
        if self.required and (image.is_index or context.tags):
            missing = [p for p in self.required if p not in present]
            if missing:
                found = ", ".join(present) or "none"
                kind = "index" if image.is_index else "single-platform image"
                return Decision.deny(
                    f"platform {', '.join(missing)} missing (this {kind} has {found}); push a "
                    f"multi-platform index with {', '.join(self.required)}"
                )
        return Decision.allow(f"platforms {', '.join(present)} acceptable")


MEDIA_TYPE_ALIASES: Mapping[str, tuple[str, ...]] = {
    "oci": (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ),
    "docker": (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ),
}


@dataclass(frozen=True)
class MediaTypes:
    """The manifest's media type must be one of these (`oci` and `docker` name both kinds)."""

    names: tuple[str, ...]
    needs: ClassVar[frozenset[str]] = frozenset()

    @property
    def media_types(self) -> frozenset[str]:
        """The full media types the names stand for."""
        return frozenset(t for n in self.names for t in MEDIA_TYPE_ALIASES.get(n, (n,)))

    def evaluate(self, context: Context) -> Decision:
        """Deny a manifest of another media type."""
        if context.image.media_type in self.media_types:
            return Decision.allow(f"media type {context.image.media_type} allowed")
        return Decision.deny(
            f"media type {context.image.media_type} is not allowed (allowed: "
            f"{', '.join(self.names)})"
        )


@dataclass(frozen=True)
class MaxSize:
    """The sum of an image's layer sizes must not exceed a limit (each image of an index)."""

    limit: int
    needs: ClassVar[frozenset[str]] = frozenset({CHILDREN})

    def evaluate(self, context: Context) -> Decision:
        """Deny an image whose layers add up to more than the limit."""
        for image in context.image.images:
            if image.layer_size > self.limit:
                where = f" ({image.platform})" if context.image.is_index and image.platform else ""
                return Decision.deny(
                    f"image{where} is {format_size(image.layer_size)}, over the "
                    f"{format_size(self.limit)} limit"
                )
        return Decision.allow(f"within {format_size(self.limit)}")


@dataclass(frozen=True)
class Deny:
    """Refuse every matching request, with the policy author's message."""

    message: str
    needs: ClassVar[frozenset[str]] = frozenset()

    def evaluate(self, context: Context) -> Decision:
        """Always deny."""
        return Decision.deny(self.message)


# -- rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """Which requests a rule applies to."""

    repositories: GlobSet
    actions: frozenset[Action]
    tags: GlobSet | None = None
    exclude_repositories: GlobSet | None = None
    exclude_tags: GlobSet | None = None

    def applies(self, request: PolicyRequest) -> tuple[str, ...] | None:
        """The request's tags this rule concerns if the rule applies, else None.

        With `tags:`, the rule applies only when one of the request's tags matches (and is not
        excluded); without, it applies to tagless requests too, unless every tag is excluded.
        """
        if not self.concerns(request.action, request.repository):
            return None
        return self.applies_to_tags(request.tags)

    def concerns(self, action: Action, repository: str) -> bool:
        """Whether the rule may apply to `action` on `repository` (its tags decide the rest)."""
        if action not in self.actions or not self.repositories.matches(repository):
            return False
        return self.exclude_repositories is None or not self.exclude_repositories.matches(
            repository
        )

    def applies_to_tags(self, tags: tuple[str, ...]) -> tuple[str, ...] | None:
        """Of a request the rule `concerns`: the tags it concerns if it applies, else None."""
        if self.exclude_tags is not None:
            kept = tuple(t for t in tags if not self.exclude_tags.matches(t))
            if tags and not kept:
                return None
            tags = kept
        if self.tags is not None:
            tags = tuple(t for t in tags if self.tags.matches(t))
            if not tags:
                return None
        return tags


@dataclass(frozen=True)
class Rule:
    """A named rule: when it applies, every requirement must hold."""

    name: str
    match: Match
    requirements: tuple[Requirement, ...]
    mode: str = "enforce"
    line: int = 0  # where the rule starts in the policy file

    @cached_property
    def needs(self) -> frozenset[str]:
        """The costly facts the requirements look at (the rule is immutable: found once)."""
        return frozenset().union(*(r.needs for r in self.requirements))

    def evaluate(
        self, request: PolicyRequest, image: ImageFacts, tags: tuple[str, ...]
    ) -> RuleVerdict:
        """Every requirement's decision on the request."""
        # What the engine could not learn denies: a rule never holds on facts it did not see.
        for fact in (MANIFEST, *sorted(self.needs)):
            why = image.unknown.get(fact)
            if why is not None:
                return RuleVerdict(
                    self.name, self.mode, (Decision.deny(f"cannot be judged: {why}"),)
                )
        if not self.requirements:
            return RuleVerdict(self.name, self.mode, (Decision.deny("the rule requires nothing"),))
        context = Context(request, image, tags)
        return RuleVerdict(
            self.name, self.mode, tuple(r.evaluate(context) for r in self.requirements)
        )
