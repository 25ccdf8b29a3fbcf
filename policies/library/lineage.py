"""Lineage: which library image an image was built from.

An image built `FROM base` starts with the base's layers. The base is therefore the longest
library image whose layer chain is a prefix of the image's chain. Chains are compared by the
uncompressed `diff_ids` of the image configs when both sides have them (a recompressed layer keeps
its diff_id but changes its digest), else by the layer digests of the manifests. Empty layers
(the 1024-zero-byte tar some builders emit for metadata-only steps) are left out of both chains:
whether a builder keeps them does not change what the image is built on.

Everything here is pure: the stores are read elsewhere (`policies.library.images`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: The diff_id of an empty tar archive (1024 zero bytes).
EMPTY_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
#: The digest of docker's gzip-compressed empty tar layer.
EMPTY_LAYER_DIGEST = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
_EMPTY = frozenset({EMPTY_DIFF_ID, EMPTY_LAYER_DIGEST})


@dataclass(frozen=True, slots=True)
class ImageLayers:
    """One platform image as lineage sees it: its layers, both ways of naming them."""

    digest: str  # the image manifest's digest
    platform: str | None  # os/arch[/variant], when known
    layers: tuple[str, ...]  # layer digests, from the manifest
    diff_ids: tuple[str, ...] | None = None  # uncompressed digests, from the config (None: unread)

    def chain(self, *, by_diff_ids: bool) -> tuple[str, ...]:
        """The layers compared, empty layers left out."""
        source = self.diff_ids if by_diff_ids and self.diff_ids is not None else self.layers
        return tuple(layer for layer in source if layer not in _EMPTY)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A platform image of a library tag, at one digest the tag pointed to (now or before)."""

    name: str  # library image name, `python`
    tag: str  # `3.12-slim`
    repository: str  # where it is stored, `library/python`
    digest: str  # what the tag pointed at: an index or an image manifest
    image: ImageLayers  # the platform image (the manifest itself, or a child of the index)
    current: bool  # whether the tag still points at `digest`
    since: float  # when the tag first pointed at `digest`
    replaced_at: float | None = None  # when the tag last moved away from `digest` (None: current)
    pending: bool = False  # pushed to the tag, not yet signed as `signed_by` asks: no base yet

    @property
    def reference(self) -> str:
        """`python:3.12-slim`."""
        return f"{self.name}:{self.tag}"


@dataclass(frozen=True, slots=True)
class Lineage:
    """What one platform image is built on (`base`), or the nearest miss (`closest`)."""

    image: ImageLayers
    base: Candidate | None
    shared: int  # layers shared with `base`, or with `closest` when there is no base
    closest: Candidate | None = None

    @property
    def platform(self) -> str | None:
        """The platform of the image."""
        return self.image.platform


def _by_diff_ids(a: ImageLayers, b: ImageLayers) -> bool:
    return a.diff_ids is not None and b.diff_ids is not None


def shared_prefix(base: ImageLayers, image: ImageLayers) -> int:
    """How many leading layers `image` has in common with `base`."""
    by_diff_ids = _by_diff_ids(base, image)
    count = 0
    for ours, theirs in zip(
        base.chain(by_diff_ids=by_diff_ids), image.chain(by_diff_ids=by_diff_ids), strict=False
    ):
        if ours != theirs:
            break
        count += 1
    return count


def base_length(base: ImageLayers) -> int:
    """The length of a base's chain (diff_ids when known)."""
    return len(base.chain(by_diff_ids=base.diff_ids is not None))


def same_platform(a: str | None, b: str | None) -> bool:
    """Whether two platforms may be the same (an unknown platform matches any)."""
    return a is None or b is None or a == b


def is_built_on(base: ImageLayers, image: ImageLayers) -> bool:
    """Whether `image` starts with every layer of `base` (a base with no layers is no base)."""
    if not same_platform(base.platform, image.platform):
        return False
    by_diff_ids = _by_diff_ids(base, image)
    ours = base.chain(by_diff_ids=by_diff_ids)
    theirs = image.chain(by_diff_ids=by_diff_ids)
    return bool(ours) and len(ours) <= len(theirs) and theirs[: len(ours)] == ours


def find_base(image: ImageLayers, candidates: Iterable[Candidate]) -> Lineage:
    """The library image `image` was built on: the longest prefix wins (the nearest base), then
    a signed digest over a pending one, then a current digest over a replaced one, then the
    newest. Without one, the closest candidate: most shared layers, then current, then the
    smallest base."""
    best: Candidate | None = None
    best_key: tuple[int, bool, bool, float] = (0, False, False, 0.0)
    closest: Candidate | None = None
    closest_key: tuple[int, bool, int] = (-1, False, 0)
    for candidate in candidates:
        if not same_platform(candidate.image.platform, image.platform):
            continue
        length = base_length(candidate.image)
        if is_built_on(candidate.image, image):
            key = (length, not candidate.pending, candidate.current, candidate.since)
            if best is None or key > best_key:
                best, best_key = candidate, key
        else:
            near = (shared_prefix(candidate.image, image), candidate.current, -length)
            if closest is None or near > closest_key:
                closest, closest_key = candidate, near
    if best is not None:
        return Lineage(image, best, best_key[0])
    return Lineage(image, None, max(closest_key[0], 0), closest)


def find_lineage(
    images: Sequence[ImageLayers], candidates: Sequence[Candidate]
) -> tuple[Lineage, ...]:
    """The lineage of every platform image of a pushed manifest (one for a plain image)."""
    return tuple(find_base(image, candidates) for image in images)
