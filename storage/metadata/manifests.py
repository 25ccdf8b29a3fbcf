"""Manifests and tags: what the OCI API stores and lists, and the interface that keeps them.

Rows: `repositories`, `manifests`, `manifest_references`, `tags` (see `storage.layout`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from storage.metadata.decisions import DecisionRecord
from storage.metadata.library import LibraryChange
from storage.metadata.outbox import OutboxRow
from storage.oci.manifest import Reference

__all__ = [
    "ManifestRecord",
    "ManifestsAndTags",
    "MissingReferences",
    "Reference",
    "Referrer",
    "RepositoryChanged",
    "RepositorySummary",
    "TagMoved",
    "TagPremise",
    "TagRow",
]


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """A stored manifest: its exact bytes and what was learnt from them on push."""

    repository: str
    digest: str
    media_type: str
    content: bytes
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    created_at: float = 0.0

    @property
    def size(self) -> int:
        """Length of the manifest in bytes."""
        return len(self.content)


@dataclass(frozen=True, slots=True)
class Referrer:
    """A manifest whose `subject` is a given digest (a row of the referrers API)."""

    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class RepositorySummary:
    """A repository as the repositories listing shows it."""

    name: str
    tags: int
    manifests: int
    updated_at: float  # the latest tag change, or the repository's creation


@dataclass(frozen=True, slots=True)
class TagRow:
    """A tag with what it points at."""

    name: str
    digest: str
    media_type: str
    size: int
    updated_at: float


class MissingReferences(Exception):
    """A manifest push refers to content the repository does not hold."""

    def __init__(self, missing: list[Reference]) -> None:
        super().__init__(", ".join(ref.digest for ref in missing))
        self.missing = missing


@dataclass(frozen=True, slots=True)
class TagPremise:
    """Where the tag of a push pointed when the push was decided (`digest` None: nowhere). The
    store moves the tag only while it still points there, checked inside its transaction, so a
    decision that read the tag (an immutable tag, the digest it leaves) cannot be overtaken by
    another process's push between the check and the commit."""

    digest: str | None


class TagMoved(Exception):
    """The tag of a push no longer points where the push was decided on (another process moved
    it meanwhile): nothing was stored, the push is to be decided again."""

    def __init__(self, tag: str, premise: str | None, found: str | None) -> None:
        super().__init__(f"tag {tag} points to {found}, not {premise}")
        self.tag = tag
        self.found = found


class RepositoryChanged(Exception):
    """A repository changed (its evidence version moved: a push, a tag, a delete) since a
    delete was decided on it: nothing was deleted, the delete is to be decided again."""

    def __init__(self, repository: str, decided: int, found: int) -> None:
        super().__init__(f"{repository} is at evidence version {found}, not {decided}")
        self.found = found


class ManifestsAndTags(ABC):
    """Repositories, manifests, their references and tags.

    A write receives what other concerns add to it as values and writes them in its own
    transaction, after the change: its `outbox` rows (the events that report it), then its
    `library` changes (a declared library tag's history following the registry tag). They
    commit or roll back with the change they describe.
    """

    @abstractmethod
    async def repository_exists(self, name: str) -> bool:
        """Whether anything was ever linked into the repository."""

    @abstractmethod
    async def list_repositories(self, limit: int, after: str | None) -> list[str]:
        """Repository names in lexical order, after `after`, at most `limit`."""

    @abstractmethod
    async def repository_summaries(
        self, *, limit: int, after: str | None, prefix: str | None = None
    ) -> list[RepositorySummary]:
        """Repositories in lexical order after `after` (names starting with `prefix`), with
        counts of tags and manifests."""

    @abstractmethod
    async def put_manifest(
        self,
        record: ManifestRecord,
        references: Iterable[Reference],
        tag: str | None,
        outbox: Sequence[OutboxRow] = (),
        library: Sequence[LibraryChange] = (),
        decisions: Sequence[DecisionRecord] = (),
        premise: TagPremise | None = None,
        library_generation: int | None = None,
    ) -> list[LibraryChange]:
        """Store a manifest (and point `tag` at it) if everything it requires is present in the
        repository (else `MissingReferences`), with a `premise`, the tag still points where
        it says (else `TagMoved`) and, with a `library_generation`, the library's history is
        still the one of that generation (else `LibraryMoved`: its lineage or decision was
        traced against a history since moved), bump the repository's evidence version, write
        the `outbox` rows, make the `library` changes and log the `decisions`: one
        transaction, so a concurrent garbage collection can never remove a blob between the
        check and the insert. A manifest pushed again has its grace period (and its blobs')
        start over. The library changes that
        changed the history (a tag followed to where it already points changes nothing)."""

    @abstractmethod
    async def get_manifest(self, repository: str, digest: str) -> ManifestRecord | None:
        """The manifest with this digest in the repository, or None."""

    @abstractmethod
    async def get_tagged_manifest(self, repository: str, tag: str) -> ManifestRecord | None:
        """The manifest a tag points at, or None."""

    @abstractmethod
    async def delete_manifest(
        self,
        repository: str,
        digest: str,
        outbox: Sequence[OutboxRow] = (),
        library: Sequence[LibraryChange] = (),
        evidence: int | None = None,
    ) -> bool:
        """Delete a manifest, its references and every tag pointing at it; whether it existed.
        When it did, the evidence version is bumped, the `outbox` rows written and the
        `library` changes made in the same transaction. With `evidence` (the repository's
        evidence version the delete was decided on), only while it is still that, checked in
        the transaction (else `RepositoryChanged`, nothing deleted): a push waits for no lock
        of the delete, and may meanwhile have tagged the manifest or listed it in a release."""

    @abstractmethod
    async def delete_tag(
        self,
        repository: str,
        tag: str,
        outbox: Sequence[OutboxRow] = (),
        library: Sequence[LibraryChange] = (),
        digest: str | None = None,
    ) -> bool:
        """Delete a tag (the manifest stays; with `digest`, only while the tag points at it);
        whether it was deleted. When it was, the evidence version is bumped, the `outbox` rows
        written and the `library` changes made in the same transaction."""

    @abstractmethod
    async def list_tags(self, repository: str, limit: int, after: str | None) -> list[str]:
        """Tags of a repository in lexical order, after `after`, at most `limit`."""

    @abstractmethod
    async def tag_rows(self, repository: str, *, limit: int, after: str | None) -> list[TagRow]:
        """The tags of a repository in lexical order after `after`, with their manifests."""

    @abstractmethod
    async def tagged_images(
        self, *, limit: int, after: tuple[str, str] | None
    ) -> list[tuple[str, str, str]]:
        """(repository, tag, digest) of every tag, ordered by repository then tag, after
        `after`."""

    @abstractmethod
    async def tag_target(self, repository: str, tag: str) -> str | None:
        """The digest a tag points at, or None."""

    @abstractmethod
    async def tags_of(self, repository: str, digest: str) -> list[str]:
        """The tags pointing at a manifest, in lexical order."""

    @abstractmethod
    async def referrers(self, repository: str, subject: str) -> list[Referrer]:
        """Manifests of the repository whose subject is `subject`, oldest first."""

    @abstractmethod
    async def manifests_needing(
        self, repository: str, digest: str, kind: str, limit: int
    ) -> list[str]:
        """Digests of the repository's manifests that reference `digest` (`kind` 'blob' or
        'manifest': an index child), newest first, at most `limit`."""

    @abstractmethod
    async def parent_indexes(self, repository: str, digest: str, limit: int) -> list[str]:
        """Digests of indexes of the repository that list the manifest `digest`, at most
        `limit`, in no particular order (cheaper than `manifests_needing`)."""

    @abstractmethod
    async def repositories_holding(self, digest: str) -> list[str]:
        """The repositories holding a manifest with this digest, in lexical order (empty: an
        unknown digest)."""

    @abstractmethod
    async def index_children(self, digest: str) -> list[str]:
        """The manifests an index with this digest lists, in any repository (empty for an
        image)."""
