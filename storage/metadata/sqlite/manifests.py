"""Manifests and tags in SQLite (`storage.metadata.manifests`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from storage.metadata.decisions import DecisionRecord
from storage.metadata.library import LIBRARY_GENERATION, LibraryChange, LibraryMoved
from storage.metadata.manifests import (
    ManifestRecord,
    MissingReferences,
    Reference,
    Referrer,
    RepositorySummary,
    TagMoved,
    TagPremise,
    TagRow,
)
from storage.metadata.outbox import OutboxRow
from storage.metadata.sqlite.connection import (
    SQLiteBase,
    bump_evidence,
    ensure_repository,
    expect_evidence,
    write_outbox,
)
from storage.metadata.sqlite.decisions import write_decisions
from storage.metadata.sqlite.library import apply_library_changes
from storage.metadata.sqlite.read_cache import Key

_MANIFEST_COLUMNS = (
    "repository, digest, media_type, content, subject, artifact_type, annotations, created_at"
)
#: The same columns of `manifests m`, for joins.
_M_MANIFEST_COLUMNS = ", ".join(f"m.{c.strip()}" for c in _MANIFEST_COLUMNS.split(","))


async def _read_expecting(
    db: Any,
    sql: str,
    args: Sequence[Any] | dict[str, Any],
    expected: Sequence[tuple[Any, ...]],
    columns: int,
) -> list[tuple[Any, ...]]:
    """The rows of a write job's query that almost always finds `expected` (in any order): a
    manifest's references all present, its tag where the push was decided on.

    A connection that pipelines its batch offers `speculate` (PostgreSQL's writer,
    `storage.metadata.postgresql.writer`): the job gets `expected` at once and goes on sending
    its writes, and the server compares the real rows (of `columns` text columns) before the
    commit; when they differ, the batch is rolled back and run again waiting for each answer,
    so the job then reads the real rows. A batch of pushes thus waits for the server once, at
    its commit, instead of once per push. Elsewhere the query is simply run."""
    speculate = getattr(db, "speculate", None)
    if speculate is not None:
        return speculate(sql, args, expected, columns)  # type: ignore[no-any-return]
    return [tuple(row) for row in await db.execute_fetchall(sql, args)]


async def _missing(
    db: Any,
    repository: str,
    refs: Sequence[Reference],
    tag: str | None = None,
    premise: str | None = None,
    library_generation: int | None = None,
) -> tuple[list[Reference], str | None, int | None]:
    """The required references absent from the repository, with `tag` the digest it points at
    (expected: `premise`) and with `library_generation` the library history's generation as it
    is now, asked in one statement (on PostgreSQL not even waited for when all is as expected,
    `_read_expecting`), however many layers: a blob must be linked into the repository, a
    manifest stored in it."""
    required = [ref for ref in refs if ref.required]
    if not required and tag is None and library_generation is None:
        return [], None, None
    blobs = [ref.digest for ref in required if ref.kind == "blob"]
    manifests = [ref.digest for ref in required if ref.kind != "blob"]
    expected = [("blob", digest) for digest in dict.fromkeys(blobs)]
    expected += [("manifest", digest) for digest in dict.fromkeys(manifests)]
    if tag is not None and premise is not None:
        expected.append(("tag", premise))
    if library_generation:  # generation 0: no row yet
        expected.append(("library", str(library_generation)))
    rows = await _read_expecting(
        db,
        "SELECT 'blob', digest FROM repository_blobs WHERE repository = :repository "
        "AND digest IN (SELECT value FROM json_each(:blobs)) "
        "UNION ALL SELECT 'manifest', digest FROM manifests WHERE repository = :repository "
        "AND digest IN (SELECT value FROM json_each(:manifests)) "
        "UNION ALL SELECT 'tag', digest FROM tags WHERE repository = :repository "
        "AND name = :tag "
        "UNION ALL SELECT 'library', CAST(generation AS TEXT) FROM shared_generations "
        "WHERE name = :library AND :traced",
        {
            "repository": repository,
            "blobs": json.dumps(blobs),
            "manifests": json.dumps(manifests),
            "tag": tag,
            "library": LIBRARY_GENERATION,
            "traced": library_generation is not None,
        },
        expected,
        columns=2,
    )
    present = {(row[0], row[1]) for row in rows}
    missing = [
        ref
        for ref in required
        if ("blob" if ref.kind == "blob" else "manifest", ref.digest) not in present
    ]
    found = next((row[1] for row in rows if row[0] == "tag"), None)
    generation = None
    if library_generation is not None:
        generation = next((int(row[1]) for row in rows if row[0] == "library"), 0)
    return missing, found, generation


class SQLiteManifests(SQLiteBase):
    """`ManifestsAndTags` on SQLite."""

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

    async def repository_summaries(
        self, *, limit: int, after: str | None, prefix: str | None = None
    ) -> list[RepositorySummary]:
        """Repositories in lexical order after `after` (names starting with `prefix`), with
        counts."""
        clause, args = "", [after or ""]
        if prefix:
            # Prefix ranges instead of LIKE: no wildcard to escape, and the index serves it.
            clause = "AND r.name >= ? AND r.name < ? "
            args += [prefix, prefix + "\U0010ffff"]
        rows = await self._all(
            "SELECT r.name, "
            "(SELECT count(*) FROM tags t WHERE t.repository = r.name), "
            "(SELECT count(*) FROM manifests m WHERE m.repository = r.name), "
            "coalesce((SELECT max(t.updated_at) FROM tags t WHERE t.repository = r.name), "
            "r.created_at) "
            f"FROM repositories r WHERE r.name > ? {clause}ORDER BY r.name LIMIT ?",
            (*args, limit),
        )
        return [RepositorySummary(row[0], int(row[1]), int(row[2]), float(row[3])) for row in rows]

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
        """Store a manifest (and point `tag` at it) if everything it references is present,
        the tag still points where the `premise` says and the library history is still at
        `library_generation`, with its `outbox` rows, `library` changes and `decisions`, in one
        transaction; the library changes made."""
        refs = list(dict.fromkeys(references))
        now = time.time()
        checked = tag if premise is not None else None

        async def store(db: Any) -> list[LibraryChange]:
            missing, found, generation = await _missing(
                db,
                record.repository,
                refs,
                checked,
                None if premise is None else premise.digest,
                library_generation,
            )
            if missing:
                raise MissingReferences(missing)
            if premise is not None and tag is not None and found != premise.digest:
                raise TagMoved(tag, premise.digest, found)
            if library_generation is not None and generation != library_generation:
                raise LibraryMoved(library_generation, generation or 0)
            if not any(ref.required for ref in refs):
                # Otherwise the repository's row exists: a required reference found in the
                # repository (checked above, or before the commit) is a row referring to it.
                await ensure_repository(db, record.repository, now)
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
            # One statement per kind of reference, however many layers (each statement is
            # work for the writer's thread on PostgreSQL).
            for kind in ("blob", "manifest"):
                children = list(dict.fromkeys(r.digest for r in refs if r.kind == kind))
                if not children:
                    continue
                await db.execute(
                    "INSERT OR IGNORE INTO manifest_references "
                    "(repository, manifest_digest, child_digest, kind) "
                    "SELECT ?, ?, value, ? FROM (SELECT value FROM json_each(?)) AS children",
                    (record.repository, record.digest, kind, json.dumps(children)),
                )
                if kind == "blob":
                    # Blobs a manifest refers to are in use now: restart their grace period.
                    await db.execute(
                        "UPDATE blobs SET last_seen = ? "
                        "WHERE digest IN (SELECT value FROM json_each(?))",
                        (now, json.dumps(children)),
                    )
            if tag is not None:
                await db.execute(
                    "INSERT INTO tags (repository, name, digest, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (repository, name) DO UPDATE SET "
                    "digest = excluded.digest, updated_at = excluded.updated_at",
                    (record.repository, tag, record.digest, now),
                )
            await bump_evidence(db, record.repository)
            await write_outbox(db, outbox)
            await write_decisions(db, decisions)
            return await apply_library_changes(db, library, now)

        # A write job: committed together with the pushes that arrive meanwhile.
        return await self.write(store)

    async def get_manifest(self, repository: str, digest: str) -> ManifestRecord | None:
        """The manifest with this digest in the repository, or None."""
        return await self._read_manifest(
            (repository, "digest", digest),
            f"SELECT {_MANIFEST_COLUMNS} FROM manifests WHERE repository = ? AND digest = ?",
        )

    async def get_tagged_manifest(self, repository: str, tag: str) -> ManifestRecord | None:
        """The manifest a tag points at, or None."""
        return await self._read_manifest(
            (repository, "tag", tag),
            f"SELECT {_M_MANIFEST_COLUMNS} FROM tags t JOIN manifests m "
            "ON m.repository = t.repository AND m.digest = t.digest "
            "WHERE t.repository = ? AND t.name = ?",
        )

    async def _read_manifest(self, key: Key, sql: str) -> ManifestRecord | None:
        """The manifest `sql` finds for (repository, reference), from memory while nothing was
        committed to the file since it was read (`read_cache`)."""
        reads = self.manifest_reads
        if reads is None:
            row = await self._one(sql, (key[0], key[2]))
            return None if row is None else _manifest(row)
        record, version = reads.lookup(key)
        if record is None:
            row = await self._one(sql, (key[0], key[2]))
            if row is None:
                return None
            record = _manifest(row)
            reads.remember(key, record, version)
        return record

    async def delete_manifest(
        self,
        repository: str,
        digest: str,
        outbox: Sequence[OutboxRow] = (),
        library: Sequence[LibraryChange] = (),
        evidence: int | None = None,
    ) -> bool:
        """Delete a manifest, its references and every tag pointing at it; whether it existed.
        With `evidence`, only while the repository is still at that version (else
        `RepositoryChanged`)."""
        return await self._delete(
            "DELETE FROM manifests WHERE repository = ? AND digest = ?",
            (repository, digest),
            outbox,
            library,
            evidence,
        )

    async def delete_tag(
        self,
        repository: str,
        tag: str,
        outbox: Sequence[OutboxRow] = (),
        library: Sequence[LibraryChange] = (),
        digest: str | None = None,
    ) -> bool:
        """Delete a tag (the manifest stays; with `digest`, only while the tag points at it);
        whether it was deleted."""
        if digest is None:
            return await self._delete(
                "DELETE FROM tags WHERE repository = ? AND name = ?",
                (repository, tag),
                outbox,
                library,
            )
        return await self._delete(
            "DELETE FROM tags WHERE repository = ? AND name = ? AND digest = ?",
            (repository, tag, digest),
            outbox,
            library,
        )

    async def _delete(
        self,
        sql: str,
        key: tuple[str, ...],
        outbox: Sequence[OutboxRow],
        library: Sequence[LibraryChange],
        evidence: int | None = None,
    ) -> bool:
        """Run a `DELETE ... WHERE repository = ? AND ...` with `key`; when it deleted anything,
        bump the repository's evidence, write `outbox` and make the `library` changes in the
        same transaction. With `evidence`, first `expect_evidence` in that transaction."""
        async with self.transaction() as db:
            if evidence is not None:
                await expect_evidence(db, key[0], evidence)
            cursor = await db.execute(sql, key)
            if cursor.rowcount > 0:
                await bump_evidence(db, key[0])
                await write_outbox(db, outbox)
                await apply_library_changes(db, library, time.time())
            return cursor.rowcount > 0

    async def list_tags(self, repository: str, limit: int, after: str | None) -> list[str]:
        """Tags of a repository in lexical order, after `after`, at most `limit`."""
        rows = await self._all(
            "SELECT name FROM tags WHERE repository = ? AND name > ? ORDER BY name LIMIT ?",
            (repository, after or "", limit),
        )
        return [row[0] for row in rows]

    async def tag_rows(self, repository: str, *, limit: int, after: str | None) -> list[TagRow]:
        """The tags of a repository in lexical order after `after`, with their manifests."""
        rows = await self._all(
            "SELECT t.name, t.digest, m.media_type, m.size, t.updated_at FROM tags t "
            "JOIN manifests m ON m.repository = t.repository AND m.digest = t.digest "
            "WHERE t.repository = ? AND t.name > ? ORDER BY t.name LIMIT ?",
            (repository, after or "", limit),
        )
        return [TagRow(row[0], row[1], row[2], int(row[3]), float(row[4])) for row in rows]

    async def tagged_images(
        self, *, limit: int, after: tuple[str, str] | None
    ) -> list[tuple[str, str, str]]:
        """(repository, tag, digest) of every tag, by repository then tag, after `after`."""
        repository, tag = after or ("", "")
        rows = await self._all(
            "SELECT repository, name, digest FROM tags WHERE (repository, name) > (?, ?) "
            "ORDER BY repository, name LIMIT ?",
            (repository, tag, limit),
        )
        return [(row[0], row[1], row[2]) for row in rows]

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
        """Digests of the repository's manifests that reference `digest`, newest first."""
        rows = await self._all(
            "SELECT r.manifest_digest FROM manifest_references r JOIN manifests m "
            "ON m.repository = r.repository AND m.digest = r.manifest_digest "
            "WHERE r.repository = ? AND r.child_digest = ? AND r.kind = ? "
            "ORDER BY m.created_at DESC, m.digest LIMIT ?",
            (repository, digest, kind, limit),
        )
        return [row[0] for row in rows]

    async def parent_indexes(self, repository: str, digest: str, limit: int) -> list[str]:
        """Digests of indexes of the repository that list the manifest `digest`."""
        rows = await self._all(
            "SELECT manifest_digest FROM manifest_references WHERE repository = ? AND "
            "child_digest = ? AND kind = 'manifest' LIMIT ?",
            (repository, digest, limit),
        )
        return [row[0] for row in rows]

    async def repositories_holding(self, digest: str) -> list[str]:
        """The repositories holding a manifest with this digest, in lexical order."""
        rows = await self._all(
            "SELECT DISTINCT repository FROM manifests WHERE digest = ? ORDER BY repository",
            (digest,),
        )
        return [row[0] for row in rows]

    async def index_children(self, digest: str) -> list[str]:
        """The manifests an index with this digest lists (empty for an image)."""
        rows = await self._all(
            "SELECT DISTINCT child_digest FROM manifest_references "
            "WHERE manifest_digest = ? AND kind = 'manifest'",
            (digest,),
        )
        return [row[0] for row in rows]


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
