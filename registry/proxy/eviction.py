"""Keeping proxied content under `proxy.cache_limit`: least recently pulled images go first.

Pulls of proxied manifests are noted in memory and written in batches (`proxy_pulls`), so a pull
costs no write. Every `evict_interval`, the bytes only proxied repositories hold are counted
(a blob that a local repository links or references is not theirs to free); while they are over
the limit, the least recently pulled image goes with its index children, signatures and
attestations, and the repository's links to blobs nothing of it references any more. The bytes
those blobs held are freed at once, by garbage collection's blob deletion protocol and rules
(`storage.gc.free_unlinked_blobs`): a blob goes only when no manifest anywhere references it
and no repository links it (a link is an upload, mount or fetch, perhaps of a push still under
way), re-decided inside the deleting transaction. Repositories in the base-image library's
namespace are never evicted.
"""

from __future__ import annotations

import asyncio
import logging
import time

from registry.context import RegistryContext
from registry.proxy.stats import ProxyStats
from registry.upstream_settings import ProxySettings
from storage.gc import free_unlinked_blobs
from storage.oci.errors import OciError
from storage.oci.manifest import parse_manifest

log = logging.getLogger("trustyard.proxy")

#: Evictable images considered per round.
BATCH = 32


class Evictor:
    """Pull bookkeeping and the eviction pass."""

    def __init__(self, ctx: RegistryContext, settings: ProxySettings, stats: ProxyStats) -> None:
        self.ctx = ctx
        self.settings = settings
        self.stats = stats
        self._pulls: dict[tuple[str, str], float] = {}
        self._lock = asyncio.Lock()

    def pulled(self, repository: str, digest: str) -> None:
        """Note a pull of a proxied manifest (written at the next flush)."""
        self._pulls[(repository, digest)] = time.time()

    async def flush(self) -> None:
        """Write the pulls noted so far."""
        pulls, self._pulls = self._pulls, {}
        await self.ctx.db.mark_pulled([(r, d, t) for (r, d), t in pulls.items()])

    async def run(self) -> None:
        """Flush and evict every `evict_interval`, for as long as the proxy runs."""
        while True:
            await asyncio.sleep(self.settings.evict_interval)
            try:
                await self.evict_once()
            except Exception:
                log.exception("proxy cache eviction failed")

    async def flush_periodically(self) -> None:
        """Write the noted pulls four times per `evict_interval` (a worker that does not evict:
        `registry.workers`)."""
        while True:
            await asyncio.sleep(self.settings.evict_interval / 4)
            try:
                await self.flush()
            except Exception:
                log.exception("writing the proxy's pull times failed")

    async def proxied_repositories(self) -> list[str]:
        """Repositories an upstream serves, outside the library's namespace."""
        library = self.ctx.policy.policy.library
        names: list[str] = []
        while page := await self.ctx.db.list_repositories(1000, names[-1] if names else None):
            names += page
        return [
            name
            for name in names
            if self.settings.route(name) is not None
            and not (library is not None and library.in_namespace(name))
        ]

    async def blobs_of(self, repository: str, digest: str) -> list[str]:
        """The blobs an eviction of image `digest` may leave unreferenced: those of the image,
        its index children, its referrers and its `sha256-<hex>` signature tags (more than go
        does no harm: each blob is decided by the deletion's own rules)."""
        db = self.ctx.db
        algorithm, _, hex_part = digest.partition(":")
        manifests = {digest, *await db.index_children(digest)}
        manifests |= {r.digest for r in await db.referrers(repository, digest)}
        for suffix in ("", ".sig", ".att"):
            target = await db.tag_target(repository, f"{algorithm}-{hex_part}{suffix}")
            if target is not None:
                manifests.add(target)
        blobs: set[str] = set()
        for manifest in sorted(manifests):
            record = await db.get_manifest(repository, manifest)
            if record is None:
                continue
            try:
                parsed = await asyncio.to_thread(parse_manifest, record.content, record.media_type)
            except OciError:
                continue
            blobs |= {ref.digest for ref in parsed.references if ref.kind == "blob"}
        return sorted(blobs)

    async def evict_once(self) -> int:
        """One pass: flush the pulls, then evict until under the limit; images evicted."""
        async with self._lock:
            await self.flush()
            limit = self.settings.cache_limit
            if limit is None:
                return 0
            repositories = await self.proxied_repositories()
            used = await self.ctx.db.exclusive_bytes(repositories)
            evicted = 0
            while used > limit:
                batch = await self.ctx.db.eviction_order(repositories, BATCH)
                if not batch:
                    break
                for image in batch:
                    blobs = await self.blobs_of(image.repository, image.digest)
                    gone = await self.ctx.db.evict_image(image.repository, image.digest)
                    self.ctx.policy.evidence_changed(image.repository)
                    freed = await free_unlinked_blobs(
                        self.ctx.db, self.ctx.store, blobs, cutoff=time.time()
                    )
                    evicted += 1
                    self.stats.count("evicted")
                    self.stats.count_evicted_bytes(sum(freed.values()))
                    log.info(
                        "proxy cache over %d bytes (%d used): evicted %s@%s (%d manifests), "
                        "last pulled %s; freed %d blobs (%d bytes)",
                        limit,
                        used,
                        image.repository,
                        image.digest,
                        len(gone),
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(image.last_pulled)),
                        len(freed),
                        sum(freed.values()),
                    )
                    used = await self.ctx.db.exclusive_bytes(repositories)
                    if used <= limit:
                        break
            return evicted
