"""The proxy's own records: when each proxied tag was last confirmed upstream, when each
proxied manifest was last pulled, and the cache's eviction (manifests, tags and blobs pulled
through the proxy are stored like pushed ones).

Rows: `proxy_tags`, `proxy_pulls` (see `storage.layout`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedImage:
    """A proxied manifest that can be evicted on its own: no index of its repository lists it,
    it has no subject, and it is no `sha256-<hex>` signature tag (those go with their image)."""

    repository: str
    digest: str
    last_pulled: float


class ProxyRecords(ABC):
    """What the pull-through proxy records besides the content it stores."""

    @abstractmethod
    async def tag_validated_at(self, repository: str, tag: str) -> float | None:
        """When the upstream last confirmed what `tag` of `repository` points at, or None."""

    @abstractmethod
    async def mark_tag_validated(self, repository: str, tag: str, when: float) -> None:
        """Record that the upstream confirmed `tag` of `repository` at `when`."""

    @abstractmethod
    async def mark_pulled(self, pulls: list[tuple[str, str, float]]) -> None:
        """Record when proxied manifests were last pulled: (repository, digest, when) each."""

    @abstractmethod
    async def eviction_order(self, repositories: list[str], limit: int) -> list[CachedImage]:
        """The least recently pulled evictable manifests of `repositories`, oldest first."""

    @abstractmethod
    async def exclusive_bytes(self, repositories: list[str]) -> int:
        """Bytes of the blobs and manifests only `repositories` hold: what evicting all of them
        could free (a blob another repository links or references is not counted)."""

    @abstractmethod
    async def evict_image(self, repository: str, digest: str) -> list[str]:
        """Remove a proxied image from `repository` in one transaction: the manifest, the index
        children no other manifest lists, its signatures and attestations (referrers and
        `sha256-<hex>` tags), their tags and freshness rows, and the repository's links to blobs
        no remaining manifest of it references (the bytes go at the next garbage collection,
        unless another repository needs them). Returns the manifest digests removed."""
