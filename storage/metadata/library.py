"""The base-image library's records: each declared library tag's history, the lineage of pushed
images (which library image each platform is built on), and the images waiting for a base.

Rows: `library_tag_history`, `image_lineage`, `images_without_base` (see `storage.layout`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from storage.metadata.outbox import OutboxRow


@dataclass(frozen=True, slots=True)
class TagHistoryEntry:
    """One period during which a library tag pointed at one digest."""

    name: str
    tag: str
    repository: str
    digest: str
    since: float
    until: float | None  # None: the tag still points here

    @property
    def current(self) -> bool:
        """Whether the tag still points at `digest`."""
        return self.until is None


#: The shared generation (`shared_generations`) every change of `library_tag_history` bumps in
#: its own transaction: a `LibraryHistory` read with its generation stays true exactly as long
#: as the generation has not moved (`put_manifest`'s `library_generation` checks it).
LIBRARY_GENERATION = "library"


@dataclass(frozen=True, slots=True)
class LibraryHistory:
    """Every library tag's history rows, oldest first, and the generation they were read at
    (one statement: the rows are exactly those of that generation)."""

    generation: int
    entries: tuple[TagHistoryEntry, ...]


class LibraryMoved(Exception):
    """A push traced or decided against the library's history at one generation, and another
    change of the history committed since: nothing was stored, the push is to be traced and
    decided again against the history as it is now."""

    def __init__(self, expected: int, found: int) -> None:
        super().__init__(f"library history at generation {found}, not {expected}")
        self.expected = expected
        self.found = found


@dataclass(frozen=True, slots=True)
class LibraryMove:
    """A library tag moved from one digest to another: images built on `previous` need a
    rebuild."""

    name: str
    tag: str
    repository: str
    digest: str
    previous: str
    media_type: str
    size: int


#: What a caller adds to the transaction that moves a library tag (the events outbox's
#: `library.tag.updated` rows), so the report exists exactly when the move does. Called inside
#: the transaction: it must be quick and do no I/O.
Announce = Callable[[LibraryMove], Sequence[OutboxRow]]


@dataclass(frozen=True, slots=True)
class FollowLibraryTag:
    """Part of a registry write (`put_manifest`): the library tag `name:tag` points at
    `repository@digest` from this write on, so the two never disagree, crash or not. As with
    `move_library_tag`, nothing changes when it points there already."""

    name: str
    tag: str
    repository: str
    digest: str
    announce: Announce | None = None


@dataclass(frozen=True, slots=True)
class EndLibraryTag:
    """Part of a registry write (`delete_tag`, `delete_manifest`): the library tag `name:tag`
    points at nothing from this write on."""

    name: str
    tag: str


class LineageRow(NamedTuple):
    """What one platform image of a pushed manifest is built on."""

    platform: str  # "" for a single-platform image
    library_name: str
    library_tag: str
    base_digest: str
    current: bool  # whether base_digest is still the library tag's current digest
    shared_layers: int
    recorded_at: float = 0.0  # set by the store on writing


@dataclass(frozen=True, slots=True)
class RecordLineage:
    """Part of a registry write (`put_manifest`): what the pushed manifest `repository@digest`
    is built on, recorded in the push's own transaction (as `record_lineage` does in one of
    its own), so a push costs one commit, not two."""

    repository: str
    digest: str
    bases: tuple[LineageRow, ...]
    first_layers: tuple[str, ...]


#: What a registry write may change of the library in its own transaction: a library tag's
#: history, and the pushed image's lineage.
LibraryChange = FollowLibraryTag | EndLibraryTag | RecordLineage


class ConsumerRow(NamedTuple):
    """A tagged image's platform built on a library tag, with that tag's state."""

    repository: str
    tag: str
    image_digest: str
    library_name: str
    library_tag: str
    base_digest: str
    current: bool
    current_digest: str | None  # what the library tag points at now
    replaced_at: float | None  # when the library tag last moved away from base_digest
    platform: str


class LibraryRecords(ABC):
    """Library tag history, image lineage and images without a base."""

    @abstractmethod
    async def move_library_tag(
        self,
        name: str,
        tag: str,
        repository: str,
        digest: str,
        now: float,
        announce: Announce | None = None,
    ) -> bool:
        """The library tag `name:tag` points at `repository@digest` from `now` on; whether it
        moved (pointing it at the digest it already points at changes nothing). In the same
        transaction: the previous period ends, the lineage rows built on the tag have their
        `current` flag recomputed, and a move away from an earlier digest is `announce`d."""

    @abstractmethod
    async def end_library_tag(self, name: str, tag: str, now: float) -> None:
        """The library tag `name:tag` points at nothing from `now` on (it was deleted): its
        period ends and no image is on its current digest any more."""

    @abstractmethod
    async def library_tag_history(
        self, name: str | None = None, tag: str | None = None
    ) -> list[TagHistoryEntry]:
        """History rows, oldest first, of every library tag (or of one image, or one tag)."""

    @abstractmethod
    async def library_history(self) -> LibraryHistory:
        """Every library tag's history rows, oldest first, with the generation they were read
        at (`LIBRARY_GENERATION`), in one statement."""

    @abstractmethod
    async def record_lineage(
        self,
        repository: str,
        digest: str,
        bases: Sequence[LineageRow],
        first_layers: Sequence[str],
        now: float,
    ) -> None:
        """Replace what the manifest `repository@digest` is recorded to be built on by `bases`.
        With no bases, the image is remembered under its `first_layers` as waiting for one
        (`images_without_base`); with bases, it no longer waits."""

    @abstractmethod
    async def images_without_base(
        self, first_layers: Sequence[str], outside: str, limit: int
    ) -> list[tuple[str, str]]:
        """(repository, digest) of images waiting for a base that start with one of
        `first_layers`, not in repository `outside`, in order, at most `limit`."""

    @abstractmethod
    async def forget_image_without_base(self, repository: str, digest: str) -> None:
        """Stop waiting for a base for a manifest (it was deleted)."""

    @abstractmethod
    async def lineage_of(self, repository: str, digest: str) -> list[LineageRow]:
        """The library bases recorded for a manifest, by platform."""

    @abstractmethod
    async def library_consumers(self, name: str, tag: str) -> list[ConsumerRow]:
        """Platforms of tagged images built on library tag `name:tag` (any digest it ever
        pointed at), by repository, tag, platform."""

    @abstractmethod
    async def stale_consumers(self) -> list[ConsumerRow]:
        """Platforms of tagged images whose base is no longer its library tag's current
        digest, by repository, tag, platform."""

    @abstractmethod
    async def consumer_counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(library name, tag) -> (tagged images built on it, of which stale)."""
