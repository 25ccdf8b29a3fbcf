"""Proxied manifests: by digest cached forever, by tag revalidated after a TTL.

A manifest asked for by digest is immutable: once stored it is served without asking upstream.
A tag is confirmed upstream with a `HEAD` (which Docker Hub does not count against its pull
limit) once its TTL has passed; the manifest is fetched again only when the digest changed.
When the upstream is down, slow or erroring, a cached tag is served stale while its last
confirmation is within `stale_if_error` of the TTL (with a `Warning` header, a log line and a
metric), and refused after that with a clear error.

Whatever the upstream serves is verified (the digest asked for, or the digest it claims) and
stored through `registry.proxy.store`, with what the policy needs to judge it: an image's config
blob, an index's child manifests, and the image's signatures and attestations (cosign `.sig`,
`.att` and `sha256-<hex>` tags, and the Referrers API) with their small layers.

Signatures are often added upstream after the image (signed after the push, attested after a
scan). So a cached image's companions are looked at again when its tag is revalidated and when a
pull of it is denied: at most once per `manifest_ttl` per image, each cosign tag with a `HEAD`
first (fetched only when its digest is new), the referrers list with one `GET`. What is new goes
through the push pipeline like the rest, so the repository's evidence version moves and the
next decision is taken afresh. A platform image is covered by a signed index holding it (the
policy's rule), so a denied pull of one (by digest, as clients pull them) looks again at the
companions of the cached indexes listing it too, each under the same once-per-TTL rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from policies.errors import PolicyDenied
from registry.bodies import BodyTooLarge, read_bounded
from registry.context import CONTEXT
from registry.errors import (
    DIGEST_INVALID,
    MANIFEST_UNKNOWN,
    TOOMANYREQUESTS,
    UNAVAILABLE,
    RegistryError,
)
from registry.proxy.blobs import BlobFetcher, FetchFailed
from registry.proxy.client import (
    RateLimited,
    UpstreamClient,
    UpstreamError,
)
from registry.proxy.stats import ProxyStats
from registry.proxy.store import parse_pulled, store_pulled_manifest
from registry.upstream_settings import ProxySettings, Upstream
from storage.errors import StorageError
from storage.metadata import ManifestRecord
from storage.oci.digests import Digest, parse_digest
from storage.oci.errors import OciError
from storage.oci.grammar import is_digest
from storage.oci.manifest import MAX_MANIFEST_SIZE
from storage.oci.media_types import INDEXES, MANIFEST_MEDIA_TYPES

log = logging.getLogger("trustyard.proxy")

ACCEPT = ", ".join(sorted(MANIFEST_MEDIA_TYPES))
#: Layers of a signature or attestation manifest fetched with it (larger ones are not
#: signatures the policy would read).
MAX_SIGNATURE_LAYER = 4 * 1024 * 1024
#: Referrers of one image mirrored at most.
MAX_REFERRERS = 64
#: Cached images whose last look at their companions is remembered (the oldest are forgotten:
#: a forgotten image is looked at again on its next revalidation or denial, no sooner).
MAX_REFRESH_MEMORY = 65536
#: Cached indexes listing a denied platform image whose companions are looked at again.
MAX_PARENT_INDEXES = 8
#: The cosign tag suffixes of an image's companions (`sha256-<hex><suffix>`).
COMPANION_SUFFIXES = (".sig", ".att", "")
#: Config media types of runnable images.
IMAGE_CONFIGS = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)


class Missing(Exception):
    """The upstream does not have the manifest (404)."""


class ManifestCache:
    """Fetch, verify, store and revalidate proxied manifests."""

    def __init__(
        self,
        app: web.Application,
        settings: ProxySettings,
        clients: dict[str, UpstreamClient],
        blobs: BlobFetcher,
        stats: ProxyStats,
    ) -> None:
        self.app = app
        self.settings = settings
        self.clients = clients
        self.blobs = blobs
        self.stats = stats
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        #: When each cached image's companions were last mirrored or checked upstream.
        self._refreshed: OrderedDict[tuple[str, str], float] = OrderedDict()

    async def ensure(
        self, upstream: Upstream, remote: str, name: str, reference: str
    ) -> dict[str, str]:
        """Have the manifest `reference` of `name` stored and fresh; the headers to add to the
        answer (a `Warning` when served stale). Raises the client's error otherwise."""
        ctx = self.app[CONTEXT]
        if is_digest(reference):
            digest = parse_digest(reference)
            if await ctx.db.get_manifest(name, str(digest)) is not None:
                self.stats.count("manifest_hit")
                return {}
        key = (name, reference)
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:  # many clients asking at once: one upstream request
                return await self._ensure(upstream, remote, name, reference)
        finally:
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]

    async def _ensure(
        self, upstream: Upstream, remote: str, name: str, reference: str
    ) -> dict[str, str]:
        ctx = self.app[CONTEXT]
        client = self.clients[upstream.name]
        if is_digest(reference):
            if await ctx.db.get_manifest(name, reference) is not None:
                self.stats.count("manifest_hit")
                return {}
            try:
                await self._fetch(client, upstream, remote, name, reference, None)
            except UpstreamError as exc:
                self.stats.count("stale_refused")
                raise _unavailable(exc, name, reference) from None
            return {}
        tag = reference
        record = await ctx.db.get_tagged_manifest(name, tag)
        validated = await ctx.db.tag_validated_at(name, tag) if record is not None else None
        now = time.time()
        fresh = validated is not None and now - validated < self.settings.manifest_ttl
        if record is not None and fresh:
            self.stats.count("manifest_hit")
            return {}
        try:
            current = await self._head(client, remote, tag) if record is not None else None
            if record is not None and current == record.digest:
                self.stats.count("manifest_revalidated")
                await self.refresh_companions(upstream, remote, name, record.digest)
            else:
                await self._fetch(client, upstream, remote, name, tag, tag)
            await ctx.db.mark_tag_validated(name, tag, time.time())
            return {}
        except UpstreamError as exc:
            return self._stale(exc, record, validated, now, name, tag)

    def _stale(
        self,
        exc: UpstreamError,
        record: ManifestRecord | None,
        validated: float | None,
        now: float,
        name: str,
        tag: str,
    ) -> dict[str, str]:
        """Serve the cached tag stale within the window, or refuse."""
        window = self.settings.manifest_ttl + self.settings.stale_if_error
        if record is not None and validated is not None and now - validated <= window:
            age = int(now - validated)
            log.warning("serving %s:%s stale (confirmed upstream %ds ago): %s", name, tag, age, exc)
            self.stats.count("stale_served")
            return {"Warning": stale_warning(exc.reason, f"last confirmed upstream {age}s ago")}
        self.stats.count("stale_refused")
        if record is not None:
            age = "never" if validated is None else f"{int(now - validated)}s ago"
            raise upstream_refusal(
                exc,
                {"name": name, "reference": tag},
                f"{exc}; the cached copy of {name}:{tag} was last confirmed upstream "
                f"{age}, outside the stale-if-error window ({int(window)}s): refused",
            )
        raise _unavailable(exc, name, tag)

    async def _head(self, client: UpstreamClient, remote: str, tag: str) -> str | None:
        """The digest the upstream's tag points at now (None when it does not say)."""
        response = await client.request("HEAD", remote, f"manifests/{tag}", {"Accept": ACCEPT})
        try:
            if response.status == 404:
                return None  # fetched again: the GET answers with the spec's 404
            if response.status != 200:
                raise UpstreamError(client.upstream, f"HEAD answered {response.status}")
            return response.headers.get("Docker-Content-Digest")
        finally:
            response.release()

    async def _fetch(
        self,
        client: UpstreamClient,
        upstream: Upstream,
        remote: str,
        name: str,
        reference: str,
        tag: str | None,
        *,
        companions: bool = True,
    ) -> None:
        """GET a manifest from upstream, verify and store it with what policy needs."""
        try:
            content, content_type, claimed = await self._get(client, remote, reference)
        except Missing:
            raise RegistryError(
                MANIFEST_UNKNOWN,
                {"name": name, "reference": reference, "upstream": upstream.name},
                message=f"manifest unknown to upstream {upstream.name} ({remote}:{reference})",
            ) from None
        expected = parse_digest(reference) if is_digest(reference) else claimed
        digest = Digest.of(content, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            self.stats.count("digest_mismatch")
            raise RegistryError(
                DIGEST_INVALID,
                {"expected": str(expected), "actual": str(digest), "upstream": upstream.name},
                message=f"upstream {upstream.name} served a manifest of digest {digest} for "
                f"{expected}: refused, nothing stored",
            )
        parsed = await parse_pulled(self.app, content, content_type, tag, digest)
        document = json.loads(content)
        # The signatures and referrers are looked up while the config is fetched, not after:
        # a cold pull waits for one round of both, not one after the other.
        looking = None
        if companions:
            self._note_refreshed(name, str(digest))
            looking = asyncio.create_task(
                self._companions(client, upstream, remote, name, str(digest))
            )
        try:
            await self._prerequisites(client, upstream, remote, name, document, parsed.media_type)
            await store_pulled_manifest(
                self.app, name, tag, content, content_type, digest, upstream.name
            )
        except BaseException:
            if looking is not None:
                looking.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await looking
            raise
        self.stats.count("manifest_fetched")
        if looking is not None:
            await looking

    async def _get(
        self, client: UpstreamClient, remote: str, reference: str
    ) -> tuple[bytes, str | None, Digest | None]:
        response = await client.request("GET", remote, f"manifests/{reference}", {"Accept": ACCEPT})
        async with response:
            if response.status == 404:
                raise Missing
            if response.status != 200:
                raise UpstreamError(client.upstream, f"manifest GET answered {response.status}")
            try:
                body = await read_bounded(response.content, MAX_MANIFEST_SIZE)
            except BodyTooLarge:
                raise UpstreamError(
                    client.upstream, "manifest larger than the 4 MiB limit"
                ) from None
            claimed = response.headers.get("Docker-Content-Digest")
            try:
                digest = parse_digest(claimed) if claimed else None
            except OciError:
                digest = None
            return body, response.headers.get("Content-Type"), digest

    async def _prerequisites(
        self,
        client: UpstreamClient,
        upstream: Upstream,
        remote: str,
        name: str,
        document: dict[str, Any],
        media_type: str,
    ) -> None:
        """Fetch what the policy reads of a manifest before it is stored: an index's children,
        an image's config, an artifact's small layers (signatures, attestations)."""
        ctx = self.app[CONTEXT]
        try:
            if media_type in INDEXES:
                for child in _descriptors(document.get("manifests")):
                    if await ctx.db.get_manifest(name, child) is None:
                        await self._fetch(
                            client, upstream, remote, name, child, None, companions=False
                        )
                return
            # The parser checked every descriptor: a digest and a size each.
            config = document["config"]
            await self.blobs.ensure(
                client, remote, name, parse_digest(config["digest"]), config["size"]
            )
            if _is_artifact(document):
                for layer in document.get("layers") or []:
                    if layer["size"] <= MAX_SIGNATURE_LAYER:
                        await self.blobs.ensure(
                            client, remote, name, parse_digest(layer["digest"]), layer["size"]
                        )
        except FetchFailed as exc:
            wait = exc.retry_after()
            if wait is not None:  # answered 429 with the pause's `Retry-After`, as a manifest
                raise RateLimited(upstream, float(wait)) from None
            raise UpstreamError(upstream, exc.reason) from None

    def _note_refreshed(self, name: str, digest: str) -> None:
        self._refreshed[(name, digest)] = time.monotonic()
        self._refreshed.move_to_end((name, digest))
        while len(self._refreshed) > MAX_REFRESH_MEMORY:
            self._refreshed.popitem(last=False)

    def refresh_due(self, name: str, digest: str) -> bool:
        """Whether the companions of cached image `name@digest` may be looked at upstream now
        (at most once per `manifest_ttl`)."""
        last = self._refreshed.get((name, digest))
        return last is None or time.monotonic() - last >= self.settings.manifest_ttl

    async def refresh_companions(
        self, upstream: Upstream, remote: str, name: str, digest: str
    ) -> bool:
        """Look upstream for signatures, attestations and referrers of cached image
        `name@digest` that arrived after it was cached, and store them (through the push
        pipeline); whether any was new. At most once per `manifest_ttl` per image; an upstream
        failure leaves what is cached as it is."""
        if not self.refresh_due(name, digest):
            return False
        self._note_refreshed(name, digest)  # first: concurrent pulls do not ask again
        self.stats.count("companions_refreshed")
        client = self.clients[upstream.name]
        db = self.app[CONTEXT].db
        algorithm, _, hex_part = digest.partition(":")
        gained = 0

        async def tagged(tag: str) -> None:
            nonlocal gained
            response = await client.request("HEAD", remote, f"manifests/{tag}", {"Accept": ACCEPT})
            response.release()
            if response.status == 404:
                return  # none upstream
            if response.status != 200:
                raise UpstreamError(client.upstream, f"HEAD {tag} answered {response.status}")
            current = response.headers.get("Docker-Content-Digest")
            if current is not None and current == await db.tag_target(name, tag):
                return  # the one we hold: no GET (without a digest to compare, GET it)
            if await self._mirror(client, upstream, remote, name, tag, tag):
                await db.mark_tag_validated(name, tag, time.time())
                gained += 1

        # Asked at once, as on the first pull; one failing does not stop the others.
        *looked, listed = await asyncio.gather(
            *(tagged(f"{algorithm}-{hex_part}{suffix}") for suffix in COMPANION_SUFFIXES),
            self._referrers(client, remote, digest),
            return_exceptions=True,
        )
        for outcome in [*looked, listed]:
            if isinstance(outcome, UpstreamError):
                log.warning("%s@%s: companions not refreshed: %s", name, digest, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
        referrers = listed if isinstance(listed, list) else []
        for referrer in referrers[:MAX_REFERRERS]:
            if await db.get_manifest(name, referrer) is None and await self._mirror(
                client, upstream, remote, name, referrer, None
            ):
                gained += 1
        if gained:
            self.stats.count("companions_gained")
            log.info("%s@%s: %d new signatures or referrers from upstream", name, digest, gained)
        return gained > 0

    async def refresh_after_denial(
        self, upstream: Upstream, remote: str, name: str, reference: str
    ) -> bool:
        """After a pull of cached `name:reference` was denied: `refresh_companions` of the
        image it names and of the cached indexes listing it (whose signatures cover it); whether
        anything new arrived (then the pull is decided again)."""
        db = self.app[CONTEXT].db
        digest = reference if is_digest(reference) else await db.tag_target(name, reference)
        if digest is None:
            return False
        images = [digest, *await db.parent_indexes(name, digest, MAX_PARENT_INDEXES)]
        gained = await asyncio.gather(
            *(self.refresh_companions(upstream, remote, name, image) for image in images)
        )
        return any(gained)

    async def _mirror(
        self,
        client: UpstreamClient,
        upstream: Upstream,
        remote: str,
        name: str,
        reference: str,
        tag: str | None,
    ) -> bool:
        """Fetch and store one companion; whether it was stored (a failure is logged: the image
        is judged on what it has)."""
        try:
            await self._fetch(client, upstream, remote, name, reference, tag, companions=False)
        except (OciError, PolicyDenied, StorageError, UpstreamError) as exc:
            log.warning("%s: companion %s not mirrored: %s", name, reference, exc)
            return False
        return True

    async def _companions(
        self, client: UpstreamClient, upstream: Upstream, remote: str, name: str, digest: str
    ) -> None:
        """Mirror the signatures and attestations of image `digest`: best effort (an image
        without them is stored all the same; the policy decides whether that is enough)."""
        algorithm, _, hex_part = digest.partition(":")

        async def tagged(tag: str) -> None:
            try:
                await self._fetch(client, upstream, remote, name, tag, tag, companions=False)
                await self.app[CONTEXT].db.mark_tag_validated(name, tag, time.time())
            except OciError as exc:
                if exc.error is not MANIFEST_UNKNOWN:
                    log.warning("%s: companion %s not mirrored: %s", name, tag, exc.message)
            except (PolicyDenied, StorageError) as exc:
                log.warning("%s: companion %s not mirrored: %s", name, tag, exc.message)
            except UpstreamError as exc:
                log.warning("%s: companion %s not mirrored: %s", name, tag, exc)

        async def listed() -> list[str]:
            try:
                return await self._referrers(client, remote, digest)
            except UpstreamError as exc:
                log.warning("%s: referrers of %s not mirrored: %s", name, digest, exc)
                return []

        # Asked at once: the first pull of an image waits for one round trip, not four.
        *_, referrers = await asyncio.gather(
            *(tagged(f"{algorithm}-{hex_part}{suffix}") for suffix in COMPANION_SUFFIXES),
            listed(),
        )
        ctx = self.app[CONTEXT]
        for referrer in referrers[:MAX_REFERRERS]:
            if await ctx.db.get_manifest(name, referrer) is not None:
                continue
            try:
                await self._fetch(client, upstream, remote, name, referrer, None, companions=False)
            except (OciError, PolicyDenied, StorageError, UpstreamError) as exc:
                log.warning("%s: referrer %s not mirrored: %s", name, referrer, exc)

    async def _referrers(self, client: UpstreamClient, remote: str, digest: str) -> list[str]:
        """The digests the upstream's Referrers API lists for `digest` (none when it has no
        such API: the `sha256-<hex>` tag fallback covers those registries)."""
        response = await client.request(
            "GET",
            remote,
            f"referrers/{digest}",
            {"Accept": "application/vnd.oci.image.index.v1+json"},
        )
        async with response:
            if response.status != 200:
                return []
            try:
                body = await read_bounded(response.content, MAX_MANIFEST_SIZE)
            except BodyTooLarge:
                return []
        try:
            document = json.loads(body)
        except ValueError:
            return []
        if not isinstance(document, dict):
            return []
        return list(_descriptors(document.get("manifests")))


def _descriptors(items: object) -> Iterable[str]:
    """The digests of a list of descriptors, skipping anything malformed."""
    if not isinstance(items, list):
        return []
    found = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("digest"), str):
            try:
                found.append(str(parse_digest(item["digest"])))
            except OciError:
                continue
    return found


def _is_artifact(document: dict[str, Any]) -> bool:
    """Whether an image manifest carries documents rather than only file system layers (a
    signature, an attestation, an SBOM): its small layers are what the policy may read."""
    if document.get("artifactType"):
        return True
    config = document.get("config")
    if isinstance(config, dict) and config.get("mediaType") not in IMAGE_CONFIGS:
        return True
    layers = document.get("layers")
    return isinstance(layers, list) and any(
        isinstance(layer, dict) and not _is_filesystem(layer.get("mediaType")) for layer in layers
    )


def _is_filesystem(media_type: object) -> bool:
    """Whether a layer media type is a file system layer (a tar, compressed or not)."""
    return isinstance(media_type, str) and (
        ".image.layer." in media_type or ".image.rootfs." in media_type
    )


def _unavailable(exc: UpstreamError, name: str, reference: str) -> RegistryError:
    return upstream_refusal(
        exc, {"name": name, "reference": reference}, f"{exc}; {name}:{reference} is not cached"
    )


def stale_warning(reason: str, detail: str) -> str:
    """A `Warning: 110` value (RFC 7234 "Response is Stale") naming why and what is served."""
    # A header value: one line, no quote that would end the warning's text early.
    reason = " ".join(reason.split()).replace('"', "'").replace("\\", "/")
    reason = reason.encode("ascii", "replace").decode()
    return f'110 trustyard "Response is Stale: {reason}; {detail}"'


def upstream_refusal(exc: UpstreamError, detail: dict[str, str], message: str) -> RegistryError:
    """The answer when the upstream failed and nothing cached can stand in: 503 UNAVAILABLE, or,
    while the upstream asks for a pause, 429 TOOMANYREQUESTS with its `Retry-After` (the
    client waits as we do, instead of retrying at once)."""
    detail = {**detail, "reason": exc.reason}
    if isinstance(exc, RateLimited):
        wait = str(max(int(exc.retry_after + 0.999), 1))
        return RegistryError(
            TOOMANYREQUESTS, detail, message=message, headers={"Retry-After": wait}
        )
    return RegistryError(UNAVAILABLE, detail, message=message)
