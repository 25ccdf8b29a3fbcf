"""`trustyard library import PATH --as python:3.12-slim`: bring a base image into the library.

PATH is an OCI image layout (a directory, or a tar of one) or a `docker save` tarball. Newer
docker writes an OCI layout inside its tarball (`index.json`), which is then read as one, so the
manifest digests docker knows are kept; an older `docker save` (only `manifest.json`) has no
manifest, so one is written (OCI, uncompressed layers) around the saved config and layers, whose
digests are kept.

Everything is checked before the tag moves: every blob's digest and size against its descriptor
(a `docker save` layer against its config's diff_id), every manifest against the registry's own
manifest checks. Blobs and manifests are written through the same storage the registry uses
(blob store + metadata database), in process; an index is kept whole, its children first. Then
the library tag's history and the image's lineage are recorded as for a push.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from policies.library.declaration import Library, parse_reference
from policies.library.history import Announce, DatabaseTagLocks, TagLocks, record_tag
from policies.library.images import INDEX_TYPES
from policies.library.recording import record_lineage, retrace_after_move, trace_lineage
from policies.library.signing import unsigned
from storage.blob_commit import commit_blob
from storage.blobstore import BlobStore
from storage.errors import LockLost
from storage.metadata import ManifestRecord, MetadataDB, MissingReferences, upload_key
from storage.oci.digests import Digest, parse_digest
from storage.oci.errors import OciError
from storage.oci.manifest import parse_manifest, platform_string

log = logging.getLogger("trustyard.library")

CHUNK = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
#: Annotations naming an image in an OCI layout's index.json (OCI's, and containerd's/docker's).
REF_ANNOTATIONS = ("org.opencontainers.image.ref.name", "io.containerd.image.name")


class LibraryImportError(ValueError):
    """The image cannot be imported; the message says why."""


class _Source(Protocol):
    """Files of an OCI layout or a docker save archive, by their relative path."""

    def open(self, name: str) -> IO[bytes] | None: ...

    def close(self) -> None: ...


class _DirectorySource:
    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self, name: str) -> IO[bytes] | None:
        path = self.root / _safe(name)
        return path.open("rb") if path.is_file() else None

    def close(self) -> None:
        pass


class _TarSource:
    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
        except (tarfile.TarError, OSError) as exc:
            raise LibraryImportError(f"{path}: not a readable tar archive ({exc})") from None
        self.members = {
            str(PurePosixPath(m.name)).removeprefix("./"): m for m in self.tar.getmembers()
        }

    def open(self, name: str) -> IO[bytes] | None:
        member = self.members.get(_safe(name))
        if member is None or not (member.isfile() or member.issym() or member.islnk()):
            return None
        try:
            return self.tar.extractfile(member)
        except (KeyError, tarfile.TarError):
            return None

    def close(self) -> None:
        self.tar.close()


def _safe(name: str) -> str:
    """A relative path inside the layout; anything escaping it is refused."""
    path = PurePosixPath(name.removeprefix("./"))
    if path.is_absolute() or ".." in path.parts:
        raise LibraryImportError(f"refusing a path outside the archive: {name!r}")
    return str(path)


def _blob_path(digest: str) -> str:
    algorithm, _, hex_part = digest.partition(":")
    return f"blobs/{algorithm}/{hex_part}"


@dataclass(frozen=True)
class Companion:
    """A signature or attestation of the imported image in the same layout: its descriptor
    (digest, size, media type) and the tag it goes under (cosign's `sha256-<hex>.sig`), or
    None for a referrer (found through its `subject`)."""

    descriptor: Mapping[str, Any]
    tag: str | None


@dataclass
class ImportResult:
    """What `import_image` did."""

    name: str
    tag: str
    repository: str
    digest: str
    media_type: str
    format: str  # oci-layout | docker-save
    platforms: list[str] = field(default_factory=list)
    blobs_added: int = 0
    blobs_present: int = 0
    moved: bool = True  # whether the library tag now points somewhere new
    pending: str | None = None  # why the tag waits for a `signed_by` signature, when it does


class _Importer:
    def __init__(self, db: MetadataDB, store: BlobStore, source: _Source, repository: str) -> None:
        self.db = db
        self.store = store
        self.source = source
        self.repository = repository
        self.added = 0
        self.present = 0
        #: Called with (bytes read, size of the archive) as blobs are copied (a terminal's bar).
        self.progress: Callable[[int, int], None] | None = None
        self.archive_size = 0
        self.bytes_read = 0
        self.manifests: list[tuple[ManifestRecord, list[Any]]] = []  # children first

    def read_small(self, name: str, what: str, limit: int = 8 << 20) -> bytes:
        handle = self.source.open(name)
        if handle is None:
            raise LibraryImportError(f"{what} missing: {name}")
        with handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise LibraryImportError(f"{what} too large: {name}")
        return data

    def read_blob(self, descriptor: Mapping[str, Any], what: str) -> bytes:
        """A small blob (manifest, config) of the layout, checked against its descriptor."""
        digest = str(descriptor.get("digest"))
        data = self.read_small(_blob_path(digest), what)
        _check(data, descriptor, what)
        return data

    async def upload(self, name: str, digest: str | None, size: int | None, what: str) -> str:
        """Store the file `name` as a blob; verify it is `digest` (when given) of `size` bytes.
        Its digest."""
        if digest is not None:
            parsed = parse_digest(digest)
            known = await self.store.size(parsed)
            if known is not None and (size is None or known == size):
                await self.db.link_blob(self.repository, digest, known)
                self.present += 1
                return digest
        handle = self.source.open(name)
        if handle is None:
            raise LibraryImportError(f"{what} missing: {name}")
        upload_id = uuid.uuid4().hex
        # Held as every upload's writer holds it: no stale-upload sweep takes these bytes.
        async with self.db.exclusive(upload_key(upload_id), wait=False):
            await self.store.start_upload(upload_id)
            await self.db.start_upload(upload_id, self.repository)
            try:
                with handle:
                    actual = await self._copy_in(upload_id, handle, name, what, digest, size)
            except BaseException:
                await self.store.abort(upload_id)
                await self.db.end_upload(upload_id)
                raise
            await self.db.end_upload(upload_id)
        self.added += 1
        return actual

    async def _copy_in(
        self,
        upload_id: str,
        handle: IO[bytes],
        name: str,
        what: str,
        digest: str | None,
        size: int | None,
    ) -> str:
        """Copy the file `name` (open as `handle`) into the upload, check it is `digest` of
        `size` bytes (when given) and commit it as a blob; its digest."""
        algorithm = parse_digest(digest).algorithm if digest else "sha256"
        hasher = hashlib.new(algorithm)
        total = 0
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
            total += len(chunk)
            await self.store.append(upload_id, chunk)
            if self.progress is not None:
                self.bytes_read += len(chunk)
                self.progress(min(self.bytes_read, self.archive_size), self.archive_size)
        actual = f"{algorithm}:{hasher.hexdigest()}"
        if digest is not None and actual != digest:
            raise LibraryImportError(f"{what} {name}: content is {actual}, expected {digest}")
        if size is not None and total != size:
            raise LibraryImportError(f"{what} {name}: {total} bytes, expected {size}")
        await commit_blob(
            self.store, self.db, upload_id, parse_digest(actual), total, self.repository
        )
        return actual

    async def store_manifests(self, tag: str | None, locks: TagLocks) -> None:
        """Store the manifests read, the last one under `tag` (whose lock the caller holds in
        `locks`: confirmed just before the tag moves)."""
        for position, (record, references) in enumerate(self.manifests):
            last = position == len(self.manifests) - 1
            if last and tag is not None:
                await locks.confirm_tags(self.repository, (tag,))
            try:
                await self.db.put_manifest(record, references, tag if last else None)
            except MissingReferences as exc:
                raise LibraryImportError(
                    f"manifest {record.digest} refers to {exc.missing[0].digest}, not imported"
                ) from None

    async def store_companion(self, companion: Companion, locks: TagLocks) -> None:
        """Store a signature or attestation of the layout (its blobs, then its manifest, under
        its tag when it has one, holding that tag's lock); a failure is logged and the companion
        left out."""
        what = f"companion {companion.tag or companion.descriptor.get('digest')}"
        self.manifests = []
        try:
            await self.oci_manifest(companion.descriptor, what)
            async with locks.tag_guard(self.repository, companion.tag):
                await self.store_manifests(companion.tag, locks)
        except (LibraryImportError, OciError) as exc:
            log.warning("%s of %s not imported: %s", what, self.repository, exc)

    def add_manifest(self, content: bytes, media_type: str | None, what: str) -> ManifestRecord:
        try:
            parsed = parse_manifest(content, media_type)
        except OciError as exc:
            raise LibraryImportError(f"{what}: {exc.message}") from None
        record = ManifestRecord(
            repository=self.repository,
            digest=str(Digest.of(content)),
            media_type=parsed.media_type,
            content=content,
            subject=parsed.subject,
            artifact_type=parsed.artifact_type,
            annotations=parsed.annotations,
        )
        self.manifests.append((record, parsed.references))
        return record

    # -- OCI image layout --------------------------------------------------------------------

    async def oci_layout(self, ref_name: str | None) -> tuple[ManifestRecord, list[str]]:
        layout = _json(self.read_small("oci-layout", "oci-layout file"), "oci-layout")
        if layout.get("imageLayoutVersion") != "1.0.0":
            raise LibraryImportError(
                f"unsupported imageLayoutVersion {layout.get('imageLayoutVersion')!r}"
            )
        index = _json(self.read_small("index.json", "index.json"), "index.json")
        entries = [m for m in index.get("manifests", []) if isinstance(m, dict)]
        entry = _choose(entries, ref_name)
        return await self.oci_manifest(entry, "image")

    async def oci_manifest(
        self, descriptor: Mapping[str, Any], what: str
    ) -> tuple[ManifestRecord, list[str]]:
        content = self.read_blob(descriptor, f"{what} manifest")
        document = _json(content, f"{what} manifest")
        media_type = document.get("mediaType") or descriptor.get("mediaType")
        platforms: list[str] = []
        if media_type in INDEX_TYPES or "manifests" in document:
            for position, child in enumerate(document.get("manifests", [])):
                platform = platform_string(child.get("platform"))
                await self.oci_manifest(child, f"{what} {platform or f'manifests[{position}]'}")
                if platform and not platform.startswith("unknown/"):
                    platforms.append(platform)
        else:
            config = document.get("config") or {}
            await self.upload(
                _blob_path(str(config.get("digest"))),
                str(config.get("digest")),
                config.get("size"),
                f"{what} config",
            )
            for layer in document.get("layers", []):
                if layer.get("urls"):
                    continue  # a foreign layer is fetched from its urls, not stored
                await self.upload(
                    _blob_path(str(layer.get("digest"))),
                    str(layer.get("digest")),
                    layer.get("size"),
                    f"{what} layer",
                )
        return self.add_manifest(content, media_type, f"{what} manifest"), platforms

    # -- docker save ---------------------------------------------------------------------------

    async def docker_save(self, ref_name: str | None) -> tuple[ManifestRecord, list[str]]:
        saved = json.loads(self.read_small("manifest.json", "manifest.json"))
        if not isinstance(saved, list) or not saved:
            raise LibraryImportError("manifest.json lists no image")
        if ref_name is None and len(saved) > 1:
            names = ", ".join(t for e in saved for t in e.get("RepoTags") or []) or "untagged"
            raise LibraryImportError(f"the archive holds {len(saved)} images ({names}); pick one")
        entry = saved[0]
        if ref_name is not None:
            found = [e for e in saved if ref_name in (e.get("RepoTags") or [])]
            if not found:
                raise LibraryImportError(f"no image {ref_name!r} in the archive")
            entry = found[0]
        config_name = str(entry.get("Config"))
        config_bytes = self.read_small(config_name, "image config")
        config = _json(config_bytes, "image config")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        layer_names = entry.get("Layers") or []
        if len(diff_ids) != len(layer_names):
            raise LibraryImportError(
                f"the config lists {len(diff_ids)} diff_ids for {len(layer_names)} layers"
            )
        config_digest = await self.upload(config_name, None, None, "image config")
        layers = []
        for name, diff_id in zip(layer_names, diff_ids, strict=True):
            handle = self.source.open(name)
            if handle is None:
                raise LibraryImportError(f"layer missing: {name}")
            with handle:
                gzipped = handle.read(2) == b"\x1f\x8b"
            # An uncompressed layer's digest is its diff_id: checked while it is stored.
            digest = await self.upload(name, None if gzipped else diff_id, None, "layer")
            size = await self.store.size(parse_digest(digest))
            layers.append(
                {
                    "mediaType": OCI_LAYER_GZIP if gzipped else OCI_LAYER_TAR,
                    "digest": digest,
                    "size": size,
                }
            )
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": layers,
        }
        content = json.dumps(manifest, indent=2).encode()
        platform = platform_string(config)
        return self.add_manifest(content, OCI_MANIFEST, "image manifest"), (
            [platform] if platform else []
        )


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise LibraryImportError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise LibraryImportError(f"{what} is not a JSON object")
    return document


def _check(data: bytes, descriptor: Mapping[str, Any], what: str) -> None:
    digest = str(descriptor.get("digest"))
    try:
        expected = parse_digest(digest)
    except OciError:
        raise LibraryImportError(f"{what}: invalid digest {digest!r}") from None
    actual = Digest.of(data, expected.algorithm)
    if actual != expected:
        raise LibraryImportError(f"{what}: content is {actual}, expected {digest}")
    if descriptor.get("size") is not None and descriptor["size"] != len(data):
        raise LibraryImportError(f"{what}: {len(data)} bytes, expected {descriptor['size']}")


def _names(entry: Mapping[str, Any]) -> Iterator[str]:
    annotations = entry.get("annotations") or {}
    for key in REF_ANNOTATIONS:
        if key in annotations:
            yield str(annotations[key])


def _choose(entries: list[dict[str, Any]], ref_name: str | None) -> dict[str, Any]:
    """The index.json entry to import: the only one, or the one named `ref_name`."""
    if not entries:
        raise LibraryImportError("index.json lists no manifest")
    if ref_name is None:
        if len(entries) == 1:
            return entries[0]
        names = ", ".join(n for e in entries for n in _names(e)) or "unnamed"
        raise LibraryImportError(
            f"the layout holds {len(entries)} images ({names}); pick one with --ref"
        )
    for entry in entries:
        names = list(_names(entry))
        if ref_name in names or any(n.endswith(f":{ref_name}") for n in names):
            return entry
    raise LibraryImportError(f"no image named {ref_name!r} in index.json")


def open_source(path: Path) -> tuple[_Source, str]:
    """The files of PATH and its format (`oci-layout` or `docker-save`)."""
    if not path.exists():
        raise LibraryImportError(f"{path}: no such file or directory")
    source: _Source = _DirectorySource(path) if path.is_dir() else _TarSource(path)
    for marker, kind in (("index.json", "oci-layout"), ("manifest.json", "docker-save")):
        handle = source.open(marker)
        if handle is not None:
            handle.close()
            if kind == "oci-layout":
                layout = source.open("oci-layout")
                if layout is None:
                    continue
                layout.close()
            return source, kind
    source.close()
    raise LibraryImportError(
        f"{path}: neither an OCI image layout (oci-layout, index.json) nor a docker save "
        "archive (manifest.json)"
    )


def _size_of(path: Path) -> int:
    """Bytes of an archive file, or of every file under a layout directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


async def import_image(
    db: MetadataDB,
    store: BlobStore,
    library: Library | None,
    path: Path,
    reference: str,
    *,
    ref_name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    announce: Announce | None = None,
    companions: Sequence[Companion] = (),
    locks: TagLocks | None = None,
) -> ImportResult:
    """Import the image at `path` as library tag `reference` (`python:3.12-slim`), which the
    policy's `library:` section must declare (`progress`: told bytes copied of the archive's;
    `announce`: reports a move of the tag, as `library.tag.updated`, in its transaction;
    `companions`: signatures and attestations of the image in the same layout, stored with it
    before `signed_by` is checked, each on its own: one that cannot be stored is logged and
    left out, and the image is judged without it; `locks`: the registry tags' locks, by default
    taken on the database). The registry tag and the library tag move under the tag's lock, as
    a push's do, confirmed just before each commit."""
    try:
        name, tag = parse_reference(reference)
    except ValueError as exc:
        raise LibraryImportError(str(exc)) from None
    if library is None:
        raise LibraryImportError("the policy file declares no library: section")
    if not library.declares(name, tag):
        declared = ", ".join(f"{i.name}:{t}" for i in library.images for t in i.tags) or "none"
        raise LibraryImportError(
            f"{name}:{tag} is not declared in the library (declared: {declared})"
        )
    repository = library.repository(name)
    source, kind = open_source(path)
    importer = _Importer(db, store, source, repository)
    if progress is not None:
        importer.progress = progress
        importer.archive_size = max(_size_of(path), 1)
    locks = DatabaseTagLocks(db) if locks is None else locks
    try:
        if kind == "oci-layout":
            record, platforms = await importer.oci_layout(ref_name)
        else:
            record, platforms = await importer.docker_save(ref_name)
        async with locks.tag_guard(repository, tag):
            await importer.store_manifests(tag, locks)
            for companion in companions:
                await importer.store_companion(companion, locks)
            if progress is not None:  # blobs already stored were not read: the copy is complete
                progress(importer.archive_size, importer.archive_size)
            # With `signed_by`, the library tag follows once the imported digest is signed.
            image = library.image(name)
            pending = (
                None if image is None else await unsigned(db, store, library, image, record.digest)
            )
            if pending is None:
                await locks.confirm_tags(repository, (tag,))
            moved = pending is None and await record_tag(
                db, name, tag, repository, record.digest, announce=announce
            )
    except LockLost as exc:
        raise LibraryImportError(
            f"{repository}:{tag}: {exc.detail['reason']} (the connection to the metadata "
            "database went): the library tag was not moved; run the import again"
        ) from None
    finally:
        source.close()
    lineages = await trace_lineage(db, store, repository, record.digest, record.content, library)
    if lineages:
        await record_lineage(db, repository, record.digest, lineages)
    if moved:
        try:  # the import is done: images found built on it are a report
            await retrace_after_move(db, store, library, repository, record.digest)
        except Exception:
            log.exception("re-tracing the images built on %s@%s failed", repository, record.digest)
    return ImportResult(
        name=name,
        tag=tag,
        repository=repository,
        digest=record.digest,
        media_type=record.media_type,
        format=kind,
        platforms=platforms,
        blobs_added=importer.added,
        blobs_present=importer.present,
        moved=moved,
        pending=pending,
    )
