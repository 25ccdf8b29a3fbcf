"""The metadata database: repositories, blob links, manifests, tags, upload sessions and the
policy decision log (SQLite).

The schema lives in `storage.layout`. Reads go through one connection and writes through another,
serialised by a lock, so a reader never sees half a write and a write transaction never has a
stranger's statement slipped into it. WAL mode lets the garbage collector (another process) and
the server use the database at once.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from storage.errors import StorageFull
from storage.layout import MIGRATIONS, SCHEMA, SCHEMA_VERSION
from storage.oci.manifest import Reference

#: SQLite's primary result code for "database or disk is full".
_SQLITE_FULL = 13


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
class DecisionRecord:
    """One row of the policy decision log (`repeats` identical decisions folded into one)."""

    time: float
    identity: str
    action: str
    repository: str
    reference: str
    digest: str
    outcome: str
    rule: str | None
    reason: str
    policy_version: str
    repeats: int = 1
    last_time: float = 0.0
    id: int = 0


class MissingReferences(Exception):
    """A manifest push refers to content the repository does not hold."""

    def __init__(self, missing: list[Reference]) -> None:
        super().__init__(", ".join(ref.digest for ref in missing))
        self.missing = missing


#: Statements a caller adds to a write transaction (the event outbox: rows that must commit or roll
#: back with the change they report).
Statements = Sequence[tuple[str, Sequence[Any]]]

#: Work a caller runs on the connection of a write transaction, after the change itself (a
#: library tag's history following the registry tag it moved): it commits or rolls back with it.
Within = Callable[[aiosqlite.Connection], Awaitable[None]]

_MANIFEST_COLUMNS = (
    "repository, digest, media_type, content, subject, artifact_type, annotations, created_at"
)
#: The same columns of `manifests m`, for joins.
_M_MANIFEST_COLUMNS = ", ".join(f"m.{c.strip()}" for c in _MANIFEST_COLUMNS.split(","))
#: The size of a blob a repository links.
_LINKED_BLOB_SIZE = (
    "SELECT b.size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest "
    "WHERE rb.repository = ? AND rb.digest = ?"
)


class MetadataDB:
    """Async access to the metadata database."""

    def __init__(
        self, reader: aiosqlite.Connection, writer: aiosqlite.Connection, path: Path | None = None
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._write_lock = asyncio.Lock()
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> MetadataDB:
        """Open (creating if needed) the database at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path)
        await writer.executescript(SCHEMA)
        async with writer.execute("SELECT version FROM schema_version") as cursor:
            row = await cursor.fetchone()
        if row is None:
            await writer.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise RuntimeError(
                f"{path}: schema version {row[0]}, this Trustyard knows {SCHEMA_VERSION}"
            )
        for table, column, statements in MIGRATIONS:
            async with writer.execute(f"PRAGMA table_info({table})") as cursor:
                columns = {info[1] for info in await cursor.fetchall()}
            if column not in columns:
                for statement in statements:
                    await writer.execute(statement)
        reader = await _connect(path)
        return cls(reader, writer, path)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[aiosqlite.Connection]:
        """A private connection inside one read transaction: a consistent view that never
        blocks a writer, where TEMP tables may be written (a dry run's simulation)."""
        assert self.path is not None
        connection = await _connect(self.path)
        try:
            await connection.execute("BEGIN")
            yield connection
            await connection.execute("ROLLBACK")
        finally:
            await connection.close()

    async def close(self) -> None:
        """Close both connections (checkpointing the WAL)."""
        async with self._write_lock:
            await self._writer.close()
        await self._reader.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction, serialised with every other write of this process."""
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                try:
                    yield self._writer
                except BaseException:
                    if self._writer.in_transaction:
                        await self._writer.execute("ROLLBACK")
                    raise
                await self._writer.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_FULL:
                    if self._writer.in_transaction:
                        await self._writer.execute("ROLLBACK")
                    raise StorageFull("disk (metadata database)") from exc
                raise

    async def read(self, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        """Rows of a read-only query, for modules that own tables described in `storage.layout`
        (scan reports, the event outbox)."""
        return await self._all(sql, args)

    async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        rows = await self._all(sql, args)
        return rows[0] if rows else None

    async def _all(self, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        # Execute and fetch to the end in one step of the connection's thread. A statement left
        # open between two awaits would hold SQLite's read snapshot for every other coroutine's
        # query on this connection, so reads under load could miss what was just committed.
        return list(await self._reader.execute_fetchall(sql, args))

    # -- repositories ----------------------------------------------------------------------

    async def repository_exists(self, name: str) -> bool:
        """Whether anything was ever linked into the repository."""
        return await self._one("SELECT 1 FROM repositories WHERE name = ?", (name,)) is not None

    async def list_repositories(self, limit: int, after: str | None) -> list[str]:
        """Repository names in lexical order, after `after`, at most `limit`."""
        rows = await self._all(
            "SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?",
            (after or "", limit),
        )
        return [row[0] for row in rows]

    # -- blobs -----------------------------------------------------------------------------

    async def blob_in_repository(self, repository: str, digest: str) -> int | None:
        """The size of a blob the repository links, or None."""
        row = await self._one(_LINKED_BLOB_SIZE, (repository, digest))
        return None if row is None else int(row[0])

    async def blob_size(self, digest: str) -> int | None:
        """The size of a committed blob, whichever repository links it, or None."""
        row = await self._one("SELECT size FROM blobs WHERE digest = ?", (digest,))
        return None if row is None else int(row[0])

    async def link_blob(self, repository: str, digest: str, size: int) -> None:
        """Record a committed blob and link it into a repository."""
        now = time.time()
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO blobs (digest, size, created_at, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (digest) DO UPDATE SET last_seen = excluded.last_seen",
                (digest, size, now, now),
            )
            await _link_blob(db, repository, digest, now)

    async def mount_blob(self, repository: str, source: str, digest: str) -> int | None:
        """Link a blob that `source` links into `repository`; its size, or None if not there."""
        now = time.time()
        async with self.transaction() as db:
            async with db.execute(_LINKED_BLOB_SIZE, (source, digest)) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return None
            await db.execute("UPDATE blobs SET last_seen = ? WHERE digest = ?", (now, digest))
            await _link_blob(db, repository, digest, now)
            return int(row[0])

    async def unlink_blob(self, repository: str, digest: str) -> bool:
        """Remove a blob from a repository (the bytes stay until GC); whether it was linked."""
        async with self.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM repository_blobs WHERE repository = ? AND digest = ?",
                (repository, digest),
            )
            return cursor.rowcount > 0

    # -- uploads ---------------------------------------------------------------------------

    async def start_upload(self, upload_id: str, repository: str) -> None:
        """Record a new upload session."""
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO uploads (id, repository, started_at) VALUES (?, ?, ?)",
                (upload_id, repository, time.time()),
            )

    async def upload_repository(self, upload_id: str) -> str | None:
        """The repository an upload session belongs to, or None if there is no such session."""
        row = await self._one("SELECT repository FROM uploads WHERE id = ?", (upload_id,))
        return None if row is None else str(row[0])

    async def end_upload(self, upload_id: str) -> None:
        """Forget an upload session (finished or cancelled)."""
        async with self.transaction() as db:
            await db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))

    async def uploads_started_before(self, cutoff: float) -> list[str]:
        """Upload sessions older than `cutoff` (epoch seconds)."""
        rows = await self._all("SELECT id FROM uploads WHERE started_at < ?", (cutoff,))
        return [row[0] for row in rows]

    async def upload_ids(self) -> set[str]:
        """Every upload session the database knows."""
        return {row[0] for row in await self._all("SELECT id FROM uploads")}

    # -- manifests and tags ----------------------------------------------------------------

    async def put_manifest(
        self,
        record: ManifestRecord,
        references: Iterable[Reference],
        tag: str | None,
        extra: Statements = (),
        within: Within | None = None,
    ) -> None:
        """Store a manifest (and point `tag` at it) if everything it references is present.

        The check and the insert are one transaction, so a concurrent garbage collection can
        never remove a blob between the two. `extra` statements run in the same transaction,
        then `within` (what must commit or roll back with the tag move: a library tag's history).
        """
        refs = list(dict.fromkeys(references))
        now = time.time()
        async with self.transaction() as db:
            missing = []
            for ref in refs:
                if not ref.required:
                    continue
                if ref.kind == "blob":
                    sql = "SELECT 1 FROM repository_blobs WHERE repository = ? AND digest = ?"
                else:
                    sql = "SELECT 1 FROM manifests WHERE repository = ? AND digest = ?"
                async with db.execute(sql, (record.repository, ref.digest)) as cursor:
                    if await cursor.fetchone() is None:
                        missing.append(ref)
            if missing:
                raise MissingReferences(missing)
            await _ensure_repository(db, record.repository, now)
            await db.execute(
                "INSERT INTO manifests (repository, digest, media_type, artifact_type, subject, "
                "annotations, size, content, created_at, last_seen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                # Pushed again: its grace period starts over, as a re-uploaded blob's does.
                "ON CONFLICT (repository, digest) DO UPDATE SET last_seen = excluded.last_seen",
                (
                    record.repository,
                    record.digest,
                    record.media_type,
                    record.artifact_type,
                    record.subject,
                    None if record.annotations is None else json.dumps(record.annotations),
                    record.size,
                    record.content,
                    now,
                    now,
                ),
            )
            await db.executemany(
                "INSERT OR IGNORE INTO manifest_references "
                "(repository, manifest_digest, child_digest, kind) VALUES (?, ?, ?, ?)",
                [(record.repository, record.digest, ref.digest, ref.kind) for ref in refs],
            )
            if refs:
                # Blobs a manifest refers to are in use now: restart their grace period.
                await db.executemany(
                    "UPDATE blobs SET last_seen = ? WHERE digest = ?",
                    [(now, ref.digest) for ref in refs if ref.kind == "blob"],
                )
            if tag is not None:
                await db.execute(
                    "INSERT INTO tags (repository, name, digest, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (repository, name) DO UPDATE SET "
                    "digest = excluded.digest, updated_at = excluded.updated_at",
                    (record.repository, tag, record.digest, now),
                )
            await _bump_evidence(db, record.repository)
            await _run(db, extra)
            if within is not None:
                await within(db)

    async def get_manifest(self, repository: str, digest: str) -> ManifestRecord | None:
        """The manifest with this digest in the repository, or None."""
        row = await self._one(
            f"SELECT {_MANIFEST_COLUMNS} FROM manifests WHERE repository = ? AND digest = ?",
            (repository, digest),
        )
        return None if row is None else _manifest(row)

    async def get_tagged_manifest(self, repository: str, tag: str) -> ManifestRecord | None:
        """The manifest a tag points at, or None."""
        row = await self._one(
            f"SELECT {_M_MANIFEST_COLUMNS} FROM tags t JOIN manifests m "
            "ON m.repository = t.repository AND m.digest = t.digest "
            "WHERE t.repository = ? AND t.name = ?",
            (repository, tag),
        )
        return None if row is None else _manifest(row)

    async def delete_manifest(
        self, repository: str, digest: str, extra: Statements = (), within: Within | None = None
    ) -> bool:
        """Delete a manifest, its references and every tag pointing at it; whether it existed.
        `extra` statements, then `within`, run in the same transaction, only when something was
        deleted."""
        return await self._delete(
            "DELETE FROM manifests WHERE repository = ? AND digest = ?",
            repository,
            digest,
            extra,
            within,
        )

    async def delete_tag(
        self, repository: str, tag: str, extra: Statements = (), within: Within | None = None
    ) -> bool:
        """Delete a tag (the manifest stays); whether it existed. `extra` statements, then
        `within`, run in the same transaction, only when something was deleted."""
        return await self._delete(
            "DELETE FROM tags WHERE repository = ? AND name = ?", repository, tag, extra, within
        )

    async def _delete(
        self, sql: str, repository: str, key: str, extra: Statements, within: Within | None
    ) -> bool:
        """Run a `DELETE ... WHERE repository = ? AND <key> = ?`; when it deleted anything, bump
        the repository's evidence and run `extra` and `within` in the same transaction."""
        async with self.transaction() as db:
            cursor = await db.execute(sql, (repository, key))
            if cursor.rowcount > 0:
                await _bump_evidence(db, repository)
                await _run(db, extra)
                if within is not None:
                    await within(db)
            return cursor.rowcount > 0

    async def list_tags(self, repository: str, limit: int, after: str | None) -> list[str]:
        """Tags of a repository in lexical order, after `after`, at most `limit`."""
        rows = await self._all(
            "SELECT name FROM tags WHERE repository = ? AND name > ? ORDER BY name LIMIT ?",
            (repository, after or "", limit),
        )
        return [row[0] for row in rows]

    async def referrers(self, repository: str, subject: str) -> list[Referrer]:
        """Manifests of the repository whose subject is `subject`, oldest first."""
        rows = await self._all(
            "SELECT digest, media_type, size, artifact_type, annotations FROM manifests "
            "WHERE repository = ? AND subject = ? ORDER BY created_at, digest",
            (repository, subject),
        )
        return [
            Referrer(row[0], row[1], row[2], row[3], None if row[4] is None else json.loads(row[4]))
            for row in rows
        ]

    async def manifests_needing(
        self, repository: str, digest: str, kind: str, limit: int
    ) -> list[str]:
        """Digests of the repository's manifests that reference `digest` (`kind` 'blob' or
        'manifest': an index child), newest first, at most `limit`."""
        rows = await self._all(
            "SELECT r.manifest_digest FROM manifest_references r JOIN manifests m "
            "ON m.repository = r.repository AND m.digest = r.manifest_digest "
            "WHERE r.repository = ? AND r.child_digest = ? AND r.kind = ? "
            "ORDER BY m.created_at DESC, m.digest LIMIT ?",
            (repository, digest, kind, limit),
        )
        return [row[0] for row in rows]

    async def tag_target(self, repository: str, tag: str) -> str | None:
        """The digest a tag points at, or None."""
        row = await self._one(
            "SELECT digest FROM tags WHERE repository = ? AND name = ?", (repository, tag)
        )
        return None if row is None else str(row[0])

    async def tags_of(self, repository: str, digest: str) -> list[str]:
        """The tags pointing at a manifest, in lexical order."""
        rows = await self._all(
            "SELECT name FROM tags WHERE repository = ? AND digest = ? ORDER BY name",
            (repository, digest),
        )
        return [row[0] for row in rows]

    # -- policy: evidence versions and the decision log ------------------------------------

    async def evidence_version(self, repository: str) -> int:
        """How many times what policy sees of a repository changed (0 if never)."""
        row = await self._one(
            "SELECT version FROM evidence_versions WHERE repository = ?", (repository,)
        )
        return 0 if row is None else int(row[0])

    async def bump_evidence(self, repository: str) -> None:
        """Record that evidence about the repository arrived (a signature, a scan)."""
        async with self.transaction() as db:
            await _bump_evidence(db, repository)

    async def record_decisions(self, records: Iterable[DecisionRecord]) -> None:
        """Append decisions to the log, in one transaction."""
        rows = [
            (
                r.time,
                r.last_time or r.time,
                r.repeats,
                r.identity,
                r.action,
                r.repository,
                r.reference,
                r.digest,
                r.outcome,
                r.rule,
                r.reason,
                r.policy_version,
            )
            for r in records
        ]
        if not rows:
            return
        async with self.transaction() as db:
            await db.executemany(
                "INSERT INTO policy_decisions (time, last_time, repeats, identity, action, "
                "repository, reference, digest, outcome, rule, reason, policy_version) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    async def list_decisions(
        self,
        *,
        repository: str | None = None,
        outcome: str | None = None,
        action: str | None = None,
        since: float | None = None,
        before_id: int | None = None,
        limit: int = 100,
        rule: str | None = None,
        identity: str | None = None,
        until: float | None = None,
    ) -> list[DecisionRecord]:
        """Logged decisions, newest first, filtered; `before_id` pages backwards."""
        where, args = [], []
        for column, value in (
            ("repository", repository),
            ("outcome", outcome),
            ("action", action),
            ("rule", rule),
            ("identity", identity),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("last_time >= ?")
            args.append(since)
        if until is not None:
            where.append("time < ?")
            args.append(until)
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = await self._all(
            "SELECT id, time, last_time, repeats, identity, action, repository, reference, digest, "
            f"outcome, rule, reason, policy_version FROM policy_decisions {clause}"
            "ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
        return [
            DecisionRecord(
                id=row[0],
                time=row[1],
                last_time=row[2],
                repeats=row[3],
                identity=row[4],
                action=row[5],
                repository=row[6],
                reference=row[7],
                digest=row[8],
                outcome=row[9],
                rule=row[10],
                reason=row[11],
                policy_version=row[12],
            )
            for row in rows
        ]

    # -- garbage collection (the rules are in `storage.gc_rules`) ----------------------------

    async def delete_each(
        self, sql: str, rows: Sequence[Mapping[str, Any]], *, evidence: bool = False
    ) -> list[int]:
        """Run the `DELETE` statement `sql` once per row of parameters, all in one write
        transaction; the positions of the rows it deleted something for. With `evidence`, the
        repository (`:repository`) of each deletion has its evidence version bumped."""
        deleted: list[int] = []
        async with self.transaction() as db:
            for position, row in enumerate(rows):
                cursor = await db.execute(sql, row)
                if cursor.rowcount > 0:
                    deleted.append(position)
                    if evidence:
                        await _bump_evidence(db, row["repository"])
        return deleted

    async def known_among(self, digests: Sequence[str]) -> set[str]:
        """Which of `digests` the database records as blobs."""
        if not digests:
            return set()
        marks = ", ".join("?" * len(digests))
        rows = await self._all(f"SELECT digest FROM blobs WHERE digest IN ({marks})", digests)
        return {row[0] for row in rows}


async def _connect(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    for pragma in (
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = NORMAL",
        "PRAGMA foreign_keys = ON",
        "PRAGMA busy_timeout = 10000",
        # Sorting and subquery scratch space in memory: nothing to write on a full disk.
        "PRAGMA temp_store = MEMORY",
    ):
        await db.execute(pragma)
    return db


async def _bump_evidence(db: aiosqlite.Connection, repository: str) -> None:
    await db.execute(
        "INSERT INTO evidence_versions (repository, version) VALUES (?, 1) "
        "ON CONFLICT (repository) DO UPDATE SET version = version + 1",
        (repository,),
    )


async def _run(db: aiosqlite.Connection, statements: Statements) -> None:
    for sql, args in statements:
        await db.execute(sql, args)


async def _ensure_repository(db: aiosqlite.Connection, name: str, now: float) -> None:
    await db.execute(
        "INSERT OR IGNORE INTO repositories (name, created_at) VALUES (?, ?)", (name, now)
    )


async def _link_blob(db: aiosqlite.Connection, repository: str, digest: str, now: float) -> None:
    """Link a recorded blob into a repository (creating the repository's row if needed)."""
    await _ensure_repository(db, repository, now)
    await db.execute(
        "INSERT OR IGNORE INTO repository_blobs (repository, digest, linked_at) VALUES (?, ?, ?)",
        (repository, digest, now),
    )


def _manifest(row: Sequence[Any]) -> ManifestRecord:
    return ManifestRecord(
        repository=row[0],
        digest=row[1],
        media_type=row[2],
        content=bytes(row[3]),
        subject=row[4],
        artifact_type=row[5],
        annotations=None if row[6] is None else json.loads(row[6]),
        created_at=row[7],
    )


# -- the management API's reads (repositories, tags, evidence, decisions over time, GC) -------


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


async def repository_summaries(
    db: MetadataDB, *, limit: int, after: str | None, prefix: str | None = None
) -> list[RepositorySummary]:
    """Repositories in lexical order after `after` (names starting with `prefix`), with counts."""
    clause, args = "", [after or ""]
    if prefix:
        # Prefix ranges instead of LIKE: no wildcard characters to escape, and the index serves it.
        clause = "AND r.name >= ? AND r.name < ? "
        args += [prefix, prefix + "\U0010ffff"]
    rows = await db.read(
        "SELECT r.name, "
        "(SELECT count(*) FROM tags t WHERE t.repository = r.name), "
        "(SELECT count(*) FROM manifests m WHERE m.repository = r.name), "
        "coalesce((SELECT max(t.updated_at) FROM tags t WHERE t.repository = r.name), "
        "r.created_at) "
        f"FROM repositories r WHERE r.name > ? {clause}ORDER BY r.name LIMIT ?",
        (*args, limit),
    )
    return [RepositorySummary(row[0], int(row[1]), int(row[2]), float(row[3])) for row in rows]


async def tag_rows(
    db: MetadataDB, repository: str, *, limit: int, after: str | None
) -> list[TagRow]:
    """The tags of a repository in lexical order after `after`, with their manifests."""
    rows = await db.read(
        "SELECT t.name, t.digest, m.media_type, m.size, t.updated_at FROM tags t "
        "JOIN manifests m ON m.repository = t.repository AND m.digest = t.digest "
        "WHERE t.repository = ? AND t.name > ? ORDER BY t.name LIMIT ?",
        (repository, after or "", limit),
    )
    return [TagRow(row[0], row[1], row[2], int(row[3]), float(row[4])) for row in rows]


async def tagged_images(
    db: MetadataDB, *, limit: int, after: tuple[str, str] | None
) -> list[tuple[str, str, str]]:
    """(repository, tag, digest) of every tag, ordered by repository then tag, after `after`."""
    repository, tag = after or ("", "")
    rows = await db.read(
        "SELECT repository, name, digest FROM tags WHERE (repository, name) > (?, ?) "
        "ORDER BY repository, name LIMIT ?",
        (repository, tag, limit),
    )
    return [(row[0], row[1], row[2]) for row in rows]


async def blob_sizes(db: MetadataDB, digests: Sequence[str]) -> dict[str, int]:
    """The sizes of the committed blobs among `digests`."""
    found: dict[str, int] = {}
    for start in range(0, len(digests), 500):
        chunk = list(digests[start : start + 500])
        marks = ", ".join("?" * len(chunk))
        for row in await db.read(
            f"SELECT digest, size FROM blobs WHERE digest IN ({marks})", chunk
        ):
            found[row[0]] = int(row[1])
    return found


async def signature_proof_rows(
    db: MetadataDB, repository: str, image_digest: str
) -> list[tuple[str, str | None, bool, dict[str, Any], str, float]]:
    """Every recorded signature proof of an image, under whichever trust config:
    (signature digest, signer, valid, detail, trust version, verified at)."""
    rows = await db.read(
        "SELECT signature_digest, signer, valid, detail, trust_version, verified_at "
        "FROM signature_proofs WHERE repository = ? AND image_digest = ? "
        "ORDER BY verified_at, signature_digest",
        (repository, image_digest),
    )
    return [(r[0], r[1], bool(r[2]), json.loads(r[3]), r[4], float(r[5])) for r in rows]


async def lineage_rows(
    db: MetadataDB, repository: str, image_digest: str
) -> list[tuple[str, str, str, str, bool, int, float]]:
    """The library bases recorded for an image: (platform, library name, library tag, base
    digest, still current, shared layers, recorded at)."""
    rows = await db.read(
        "SELECT platform, library_name, library_tag, base_digest, current, shared_layers, "
        "recorded_at FROM image_lineage WHERE repository = ? AND image_digest = ? "
        "ORDER BY platform",
        (repository, image_digest),
    )
    return [(r[0], r[1], r[2], r[3], bool(r[4]), int(r[5]), float(r[6])) for r in rows]


async def decision_counts(
    db: MetadataDB, *, since: float, bucket: float, repository: str | None = None
) -> list[tuple[float, str, int]]:
    """Decisions per time bucket and outcome since `since` (repeats counted):
    (bucket start, outcome, count), oldest first."""
    clause, args = "", [since]
    if repository is not None:
        clause = "AND repository = ? "
        args.append(repository)
    rows = await db.read(
        "SELECT CAST((time - ?) / ? AS INTEGER), outcome, sum(repeats) FROM policy_decisions "
        f"WHERE time >= ? {clause}GROUP BY 1, 2 ORDER BY 1, 2",
        (since, bucket, *args),
    )
    return [(since + int(row[0]) * bucket, row[1], int(row[2])) for row in rows]


async def record_gc_run(db: MetadataDB, started: float, summary: dict[str, int]) -> None:
    """Remember a garbage collection: a row a run (runs are rare), so `/metrics` can count them
    and the health page show the latest."""
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO gc_runs (started_at, finished_at, summary) VALUES (?, ?, ?)",
            (started, time.time(), json.dumps(summary)),
        )


async def gc_run_totals(db: MetadataDB) -> tuple[int, float]:
    """How many garbage collections ran on this registry, and when the last one ended (0: never)."""
    rows = await db.read("SELECT count(*), max(finished_at) FROM gc_runs")
    return (int(rows[0][0]), float(rows[0][1] or 0.0)) if rows else (0, 0.0)


async def last_gc_run(db: MetadataDB) -> tuple[float, float, dict[str, int]] | None:
    """(started, finished, summary) of the latest garbage collection, or None if none ran."""
    rows = await db.read(
        "SELECT started_at, finished_at, summary FROM gc_runs ORDER BY id DESC LIMIT 1"
    )
    return None if not rows else (float(rows[0][0]), float(rows[0][1]), json.loads(rows[0][2]))


async def event_backlog(db: MetadataDB) -> list[tuple[str, str, int, float, str | None]]:
    """Undelivered events per endpoint and state: (endpoint, state, count, oldest created at,
    the newest row's last error)."""
    rows = await db.read(
        "SELECT endpoint, state, count(*), min(created_at), "
        "(SELECT o2.last_error FROM event_outbox o2 WHERE o2.endpoint = o.endpoint "
        " AND o2.state = o.state AND o2.last_error IS NOT NULL ORDER BY o2.id DESC LIMIT 1) "
        "FROM event_outbox o GROUP BY endpoint, state ORDER BY endpoint, state"
    )
    return [(r[0], r[1], int(r[2]), float(r[3]), r[4]) for r in rows]
