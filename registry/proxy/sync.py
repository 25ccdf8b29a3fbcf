"""`trustyard library sync`: fetch each declared library tag from its `source:` upstream.

A library image's `source:` (`docker.io/library/python`) names a repository under an upstream's
prefix (`upstreams:` in the configuration). Each of its declared tags is fetched whole (the
manifest, an index's children, every blob, each verified against its digest) into a scratch
OCI image layout, then imported by `library import`'s own path: the tag history moves when the
digest is new (once signed, when the image asks `signed_by`), lineage is traced, and images built
on the previous digest show up in `library stale`.

The image's signatures and attestations come with it (cosign's `sha256-<hex>.sig`, `.att` and
`sha256-<hex>` tags, and the Referrers API's list), verified like the image and stored in the
library repository before `signed_by` is checked, so an upstream signature can satisfy it. Such
a signature names the upstream's repository (`docker.io/library/python`), not the library's:
`remap_library_sources` lets exactly the declared source's name, on its upstream's host, count
for the library repository (as the proxy does for its namespaces).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policies.library.declaration import Library
from policies.library.history import Announce, TagLocks
from policies.library.importer import Companion, LibraryImportError, import_image
from policies.signatures.references import remap_sources
from registry.bodies import BodyTooLarge, read_bounded
from registry.context import RegistryContext
from registry.events.hub import EventHub
from registry.proxy.client import UpstreamClient, UpstreamError
from registry.upstream_settings import ProxySettings
from storage.blobstore import BlobStore
from storage.metadata import MetadataDB
from storage.oci.digests import parse_digest
from storage.oci.errors import OciError
from storage.oci.manifest import MAX_MANIFEST_SIZE
from storage.oci.media_types import MANIFEST_MEDIA_TYPES

ACCEPT = ", ".join(sorted(MANIFEST_MEDIA_TYPES))
#: Who the events and the history name for moves made by a sync.
SYNC_ACTOR = "library-sync"
#: How often the server looks for a `library.sync_interval` when the policy sets none.
IDLE_CHECK = 60.0
#: A signature or attestation with a blob larger than this is not brought along (it is no
#: signature the policy would read); at most this many referrers are.
MAX_COMPANION_BLOB = 4 * 1024 * 1024
MAX_REFERRERS = 64
#: An index may hold indexes; deeper than this, the upstream is not answering an image.
MAX_INDEX_DEPTH = 4

log = logging.getLogger("trustyard.library")


class SyncError(Exception):
    """A library tag could not be synced; the message says why."""


@dataclass(frozen=True)
class SyncTarget:
    """One declared library tag and where it comes from."""

    name: str
    tag: str
    source: str  # the proxied name, e.g. docker.io/library/python


def targets(library: Library, only: str | None) -> list[SyncTarget]:
    """The declared tags to sync: all with a `source:`, or those `only` (NAME or NAME:TAG)
    names; SyncError when `only` names nothing declared with a source."""
    name, _, tag = (only or "").partition(":")
    found = [
        SyncTarget(image.name, t, image.source)
        for image in library.images
        if image.source is not None and (not name or image.name == name)
        for t in image.tags
        if not tag or t == tag
    ]
    if only and not found:
        raise SyncError(f"{only}: not a declared library image or tag with a source:")
    return found


def remap_library_sources(library: Library | None, settings: ProxySettings) -> None:
    """Let signatures naming each library image's `source:` on its upstream's host count for
    the library repository (the declared source only; every other name still does not)."""
    mapping = {}
    for image in library.images if library is not None else ():
        routed = settings.route(image.source) if image.source is not None else None
        if library is not None and routed is not None:
            upstream, path = routed
            mapping[library.repository(image.name)] = (upstream.identity(), path)
    remap_sources(mapping)


@dataclass(frozen=True)
class Fetched:
    """A declared tag fetched into a scratch layout, with its signatures and attestations."""

    digest: str
    layout: Path
    companions: list[Companion]


async def fetch_layout(settings: ProxySettings, target: SyncTarget, directory: Path) -> Fetched:
    """Fetch `target` and its signatures and attestations from its upstream into an OCI image
    layout under `directory`."""
    routed = settings.route(target.source)
    if routed is None:
        prefixes = ", ".join(u.prefix for u in settings.upstreams)
        raise SyncError(
            f"{target.name}: source {target.source} is under no upstream's prefix ({prefixes})"
        )
    upstream, path = routed
    remote = upstream.remote_name(path)
    client = UpstreamClient(upstream)
    layout = directory / f"{target.name.replace('/', '_')}-{target.tag}"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    try:
        content, media_type, digest = await _manifest(client, remote, target.tag)
        await _store_tree(client, remote, layout, content)
        _write(layout, digest, content)
        companions = await _companions(client, remote, layout, digest)
    except UpstreamError as exc:
        raise SyncError(f"{target.name}:{target.tag}: {exc}") from None
    finally:
        await client.close()
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    entry = {
        "mediaType": media_type,
        "digest": digest,
        "size": len(content),
        "annotations": {"org.opencontainers.image.ref.name": target.tag},
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return Fetched(digest, layout, companions)


async def _companions(
    client: UpstreamClient, remote: str, layout: Path, digest: str
) -> list[Companion]:
    """The signatures and attestations of image `digest` upstream, fetched into the layout:
    cosign's tags, then the referrers the Referrers API lists. Each is best effort (a missing
    or oversized one is left out: `signed_by` decides whether what came is enough)."""
    algorithm, _, hex_part = digest.partition(":")
    found: list[Companion] = []
    for suffix in (".sig", ".att", ""):
        tag = f"{algorithm}-{hex_part}{suffix}"
        companion = await _companion(client, remote, layout, tag, tag)
        if companion is not None:
            found.append(companion)
    seen = {str(c.descriptor["digest"]) for c in found}
    for referrer in (await _referrers(client, remote, digest))[:MAX_REFERRERS]:
        if referrer not in seen:
            companion = await _companion(client, remote, layout, referrer, None)
            if companion is not None:
                found.append(companion)
    return found


async def _companion(
    client: UpstreamClient, remote: str, layout: Path, reference: str, tag: str | None
) -> Companion | None:
    try:
        content, media_type, digest = await _manifest(client, remote, reference, missing_ok=True)
    except UpstreamError as exc:
        log.warning("library sync: %s of %s not brought along: %s", reference, remote, exc)
        return None
    if not content:
        return None  # the upstream has none
    try:
        document = json.loads(content)
        blobs = [document["config"], *document.get("layers", [])]
        if any(int(blob["size"]) > MAX_COMPANION_BLOB for blob in blobs):
            log.warning("library sync: %s of %s is too large to be a signature", reference, remote)
            return None
        for blob in blobs:
            await _blob(client, remote, layout, *_descriptor(blob))
    except (ValueError, KeyError, TypeError, OciError, UpstreamError) as exc:
        log.warning("library sync: %s of %s not brought along: %s", reference, remote, exc)
        return None
    _write(layout, digest, content)
    descriptor = {"mediaType": media_type, "digest": digest, "size": len(content)}
    return Companion(descriptor, tag)


async def _referrers(client: UpstreamClient, remote: str, digest: str) -> list[str]:
    """The digests the upstream's Referrers API lists for `digest` (none without the API)."""
    try:
        response = await client.request(
            "GET",
            remote,
            f"referrers/{digest}",
            {"Accept": "application/vnd.oci.image.index.v1+json"},
        )
        async with response:
            if response.status != 200:
                return []
            body = await read_bounded(response.content, MAX_MANIFEST_SIZE)
        manifests = json.loads(body).get("manifests")
        return [str(parse_digest(m["digest"])) for m in manifests]
    except (
        UpstreamError,
        BodyTooLarge,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        OciError,
    ) as exc:
        log.warning("library sync: referrers of %s@%s not listed: %s", remote, digest, exc)
        return []


async def _manifest(
    client: UpstreamClient, remote: str, reference: str, *, missing_ok: bool = False
) -> tuple[bytes, str, str]:
    """A manifest from upstream, verified against its digest; with `missing_ok`, empty bytes
    when the upstream has none."""
    response = await client.request("GET", remote, f"manifests/{reference}", {"Accept": ACCEPT})
    async with response:
        if response.status == 404 and missing_ok:
            return b"", "", ""
        if response.status != 200:
            raise UpstreamError(client.upstream, f"manifest {reference}: {response.status}")
        try:
            content = await read_bounded(response.content, MAX_MANIFEST_SIZE)
        except BodyTooLarge:
            raise UpstreamError(client.upstream, "manifest larger than the 4 MiB limit") from None
        claimed = response.headers.get("Docker-Content-Digest")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    expected = reference if reference.startswith("sha256:") else claimed
    if expected is not None and expected != digest:
        raise UpstreamError(client.upstream, f"manifest {reference} is {digest}, not {expected}")
    try:
        document = json.loads(content)
        declared = document.get("mediaType")
    except (ValueError, AttributeError):
        raise UpstreamError(client.upstream, f"manifest {reference} is not a JSON object") from None
    return content, declared if isinstance(declared, str) and declared else media_type, digest


async def _store_tree(
    client: UpstreamClient, remote: str, layout: Path, content: bytes, depth: int = 0
) -> None:
    """Every manifest and blob `content` needs, verified, into the layout. What the upstream
    answers is not trusted: a document that is not a manifest, an index nested deeper than
    `MAX_INDEX_DEPTH` or a descriptor without a digest and size refuses the sync."""
    if depth > MAX_INDEX_DEPTH:
        raise UpstreamError(client.upstream, f"indexes nested deeper than {MAX_INDEX_DEPTH}")
    try:
        document = json.loads(content)
        children = [_descriptor(child) for child in document.get("manifests") or []]
        blobs = [
            _descriptor(blob)
            for blob in [document.get("config"), *(document.get("layers") or [])]
            if blob is not None
        ]
    except (ValueError, TypeError, AttributeError, KeyError, OciError) as exc:
        raise UpstreamError(client.upstream, f"not a manifest: {exc}") from None
    for child_digest, _ in children:
        child_content, _, verified = await _manifest(client, remote, child_digest)
        _write(layout, verified, child_content)
        await _store_tree(client, remote, layout, child_content, depth + 1)
    for digest, size in blobs:
        await _blob(client, remote, layout, digest, size)


def _descriptor(item: Any) -> tuple[str, int]:
    """(digest, size) of a descriptor; ValueError/KeyError/TypeError when it names none."""
    size = item["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"descriptor size {size!r}")
    return str(parse_digest(item["digest"])), size


async def _blob(client: UpstreamClient, remote: str, layout: Path, digest: str, size: int) -> None:
    """Blob `digest` into the layout, verified; the upstream may send no more than the `size`
    its manifest declares (the bytes go to disk: a runaway body must not fill it)."""
    target = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    if target.exists():
        return
    partial = target.with_suffix(".partial")
    hasher = hashlib.sha256()
    received = 0
    response = await client.request("GET", remote, f"blobs/{digest}")
    async with response:
        if response.status != 200:
            raise UpstreamError(client.upstream, f"blob {digest}: {response.status}")
        with partial.open("wb") as out:
            async for chunk in response.content.iter_chunked(1 << 20):
                received += len(chunk)
                if received > size:
                    out.close()
                    partial.unlink()
                    raise UpstreamError(
                        client.upstream, f"blob {digest}: more than the {size} bytes declared"
                    )
                hasher.update(chunk)
                out.write(chunk)
    if "sha256:" + hasher.hexdigest() != digest:
        partial.unlink()
        raise UpstreamError(client.upstream, f"blob {digest}: the bytes are of another digest")
    partial.rename(target)


def _write(layout: Path, digest: str, content: bytes) -> None:
    (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(content)


def scratch() -> tempfile.TemporaryDirectory[str]:
    """A scratch directory for the layouts of one sync."""
    return tempfile.TemporaryDirectory(prefix="trustyard-sync-")


@dataclass(frozen=True)
class Synced:
    """What a sync did to one declared tag."""

    target: SyncTarget
    digest: str | None = None  # the upstream's digest, when fetched
    state: str = "failed"  # moved | unchanged | pending | failed
    detail: str = ""  # why pending or failed

    def line(self) -> str:
        """One line for the operator."""
        where = f"{self.target.name}:{self.target.tag} from {self.target.source}"
        if self.state == "moved":
            return f"{where}: moved to {self.digest}"
        if self.state == "unchanged":
            return f"{where}: unchanged ({self.digest})"
        if self.state == "pending":
            return f"{where}: {self.digest} is not signed yet: {self.detail}"
        return f"{where}: {self.detail}"


async def sync_tags(
    db: MetadataDB,
    store: BlobStore,
    library: Library,
    settings: ProxySettings,
    announce: Announce,
    only: str | None = None,
    locks: TagLocks | None = None,
) -> list[Synced]:
    """Fetch each declared tag with a source (or `only`) and import it; a move is `announce`d
    in its transaction, under the tag's lock in `locks` (by default taken on the database).
    SyncError when `only` names nothing to sync."""
    done = []
    remap_library_sources(library, settings)
    for target in targets(library, only):
        with scratch() as folder:
            try:
                fetched = await fetch_layout(settings, target, Path(folder))
                digest = fetched.digest
                result = await import_image(
                    db,
                    store,
                    library,
                    fetched.layout,
                    f"{target.name}:{target.tag}",
                    announce=announce,
                    companions=fetched.companions,
                    locks=locks,
                )
            except (SyncError, LibraryImportError) as exc:
                log.warning("library sync: %s", exc)
                done.append(Synced(target, detail=str(exc)))
                continue
        if result.pending is not None:
            done.append(Synced(target, digest, "pending", result.pending))
        else:
            done.append(Synced(target, digest, "moved" if result.moved else "unchanged"))
        log.info("library sync: %s", done[-1].line())
    return done


async def sync_library(
    ctx: RegistryContext, events: EventHub, settings: ProxySettings, only: str | None = None
) -> list[Synced]:
    """Inside the server: `sync_tags` with the running registry's stores and policy; each move
    is announced as `library.tag.updated` and wakes the event sender."""
    library = ctx.policy.policy.library
    if library is None:
        return []
    done = await sync_tags(
        ctx.db, ctx.store, library, settings, events.library_moved(SYNC_ACTOR), only, ctx.policy
    )
    for synced in done:
        if synced.state == "moved":
            events.committed()
            ctx.policy.evidence_changed(library.repository(synced.target.name))
    return done


async def sync_periodically(
    ctx: RegistryContext, events: EventHub, settings: ProxySettings
) -> None:
    """Run `sync_library` every `library.sync_interval` of the current policy (re-read each
    time: a reloaded policy changes it); without one, look again every minute."""
    while True:
        library = ctx.policy.policy.library
        interval = library.sync_interval if library is not None else None
        await asyncio.sleep(interval if interval else IDLE_CHECK)
        if interval:
            try:
                await sync_library(ctx, events, settings)
            except Exception:
                log.exception("library sync failed")
