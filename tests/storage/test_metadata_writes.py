"""What other concerns add to a registry write is written in its transaction, as values: the
events outbox rows and a library tag's history following the registry tag commit with the change
or not at all (through the metadata interface, on a real SQLite file and a real PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.metadata import (
    EndLibraryTag,
    FollowLibraryTag,
    LibraryMove,
    ManifestRecord,
    MetadataDB,
    MissingReferences,
    OutboxRow,
    RecordLineage,
    Reference,
    TagMoved,
    TagPremise,
    open_metadata,
)

LAYER = "sha256:" + "1" * 64
MISSING = "sha256:" + "9" * 64


@pytest.fixture
async def db(tmp_path: Path, backend_url: str | None) -> AsyncIterator[MetadataDB]:
    opened = await open_metadata(tmp_path / "metadata.sqlite", backend_url)
    await opened.link_blob("library/python", LAYER, 10)
    try:
        yield opened
    finally:
        await opened.close()


def manifest(n: int) -> ManifestRecord:
    content = json.dumps({"schemaVersion": 2, "n": n}).encode()
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    return ManifestRecord(
        "library/python", digest, "application/vnd.oci.image.manifest.v1+json", content
    )


def event(kind: str, at: float) -> OutboxRow:
    return OutboxRow("hook", "library/python", kind, b'{"id": "%s"}' % kind.encode(), at)


async def test_outbox_rows_and_a_library_tag_commit_with_the_push(db: MetadataDB) -> None:
    first, second = manifest(1), manifest(2)
    moves: list[LibraryMove] = []

    def announce(move: LibraryMove) -> list[OutboxRow]:
        moves.append(move)
        return [event("library.tag.updated", 2.0)]

    follow = FollowLibraryTag("python", "3.12", "library/python", first.digest, announce)
    made = await db.put_manifest(
        first, [Reference(LAYER, "blob")], "3.12", [event("a", 1.0)], [follow]
    )
    assert made == [follow]
    history = await db.library_tag_history("python", "3.12")
    assert [(h.digest, h.current) for h in history] == [(first.digest, True)]
    assert moves == []  # a first digest is no move away from anything

    # The same digest again changes nothing; a new one ends the period and is announced.
    again = await db.put_manifest(first, [Reference(LAYER, "blob")], "3.12", (), [follow])
    assert again == []
    follow2 = FollowLibraryTag("python", "3.12", "library/python", second.digest, announce)
    assert await db.put_manifest(second, [], "3.12", [event("b", 3.0)], [follow2]) == [follow2]
    history = await db.library_tag_history("python", "3.12")
    assert [(h.digest, h.current) for h in history] == [
        (first.digest, False),
        (second.digest, True),
    ]
    assert moves == [
        LibraryMove(
            "python",
            "3.12",
            "library/python",
            second.digest,
            first.digest,
            "application/vnd.oci.image.manifest.v1+json",
            second.size,
        )
    ]
    rows = await db.outbox_rows()
    assert [(r.type, r.created_at) for r in rows] == [
        ("a", 1.0),
        ("b", 3.0),
        ("library.tag.updated", 2.0),
    ]


async def test_a_refused_push_leaves_no_outbox_row_and_no_library_history(db: MetadataDB) -> None:
    record = manifest(1)
    follow = FollowLibraryTag("python", "3.12", "library/python", record.digest)
    with pytest.raises(MissingReferences) as refused:
        await db.put_manifest(
            record,
            [Reference(LAYER, "blob"), Reference(MISSING, "blob")],
            "3.12",
            [event("a", 1.0)],
            [follow],
        )
    assert [ref.digest for ref in refused.value.missing] == [MISSING]
    assert await db.get_manifest("library/python", record.digest) is None
    assert await db.outbox_rows() == []
    assert await db.library_tag_history() == []


async def test_a_deleted_tag_ends_its_library_history_in_the_same_write(db: MetadataDB) -> None:
    record = manifest(1)
    follow = FollowLibraryTag("python", "3.12", "library/python", record.digest)
    await db.put_manifest(record, [Reference(LAYER, "blob")], "3.12", (), [follow])
    end = EndLibraryTag("python", "3.12")

    # Nothing deleted (no such tag): nothing written either.
    assert not await db.delete_tag("library/python", "3.11", [event("gone", 5.0)], [end])
    assert [h.current for h in await db.library_tag_history()] == [True]
    assert await db.outbox_rows() == []

    assert await db.delete_tag("library/python", "3.12", [event("gone", 5.0)], [end])
    assert [h.current for h in await db.library_tag_history()] == [False]
    assert [r.type for r in await db.outbox_rows()] == ["gone"]
    assert await db.tag_target("library/python", "3.12") is None


async def test_a_failure_inside_the_write_rolls_back_the_push_with_its_rows(
    db: MetadataDB,
) -> None:
    first, second = manifest(1), manifest(2)
    follow = FollowLibraryTag("python", "3.12", "library/python", first.digest)
    await db.put_manifest(first, [Reference(LAYER, "blob")], "3.12", (), [follow])

    def broken(move: LibraryMove) -> list[OutboxRow]:
        raise RuntimeError(f"cannot announce {move.digest}")

    moved = FollowLibraryTag("python", "3.12", "library/python", second.digest, broken)
    with pytest.raises(RuntimeError, match="cannot announce"):
        await db.put_manifest(second, [], "3.12", [event("b", 3.0)], [moved])
    # Nothing of the write remains: not the manifest, not the tag, not the row, not the history.
    assert await db.get_manifest("library/python", second.digest) is None
    assert await db.tag_target("library/python", "3.12") == first.digest
    assert await db.outbox_rows() == []
    assert [(h.digest, h.current) for h in await db.library_tag_history()] == [(first.digest, True)]


async def test_a_push_decided_on_where_its_tag_pointed_is_stored_only_while_it_still_does(
    db: MetadataDB,
) -> None:
    first, second, third = manifest(1), manifest(2), manifest(3)
    # Decided on "the tag points nowhere": stored while that holds.
    await db.put_manifest(first, [], "v1", (), (), (), TagPremise(None))
    assert await db.tag_target("library/python", "v1") == first.digest

    # Another process's push landed in between: the premise no longer holds, nothing is written.
    with pytest.raises(TagMoved) as moved:
        await db.put_manifest(second, [], "v1", [event("pushed", 1.0)], [], [], TagPremise(None))
    assert moved.value.found == first.digest
    assert await db.tag_target("library/python", "v1") == first.digest
    assert await db.get_manifest("library/python", second.digest) is None
    assert await db.outbox_rows() == []

    # Decided on where the tag points now: moved.
    await db.put_manifest(third, [], "v1", (), (), (), TagPremise(first.digest))
    assert await db.tag_target("library/python", "v1") == third.digest


async def test_a_tag_is_deleted_only_while_it_points_at_the_manifest_decided_on(
    db: MetadataDB,
) -> None:
    first, second = manifest(1), manifest(2)
    await db.put_manifest(first, [], "v1")
    await db.put_manifest(second, [], "v1")  # moved since a delete of v1 decided on `first`
    assert not await db.delete_tag(
        "library/python", "v1", [event("gone", 1.0)], digest=first.digest
    )
    assert await db.tag_target("library/python", "v1") == second.digest
    assert await db.outbox_rows() == []
    assert await db.delete_tag("library/python", "v1", digest=second.digest)
    assert await db.tag_target("library/python", "v1") is None


async def test_a_pushed_images_lineage_is_written_with_the_push_or_not_at_all(
    db: MetadataDB,
) -> None:
    first, second = manifest(1), manifest(2)
    waiting = RecordLineage("library/python", first.digest, (), (LAYER,))
    assert await db.put_manifest(first, [Reference(LAYER, "blob")], "a", (), [waiting]) == []
    assert await db.images_without_base([LAYER], "elsewhere", 10) == [
        ("library/python", first.digest)
    ]
    refused = RecordLineage("library/python", second.digest, (), (LAYER,))
    with pytest.raises(MissingReferences):
        await db.put_manifest(second, [Reference(MISSING, "blob")], "b", (), [refused])
    assert await db.images_without_base([LAYER], "elsewhere", 10) == [
        ("library/python", first.digest)
    ]


@pytest.mark.parametrize(
    "references",
    [[], [Reference(MISSING, "blob", required=False)]],
    ids=["no references", "references fetched later"],
)
async def test_a_manifest_requiring_nothing_creates_its_repository(
    db: MetadataDB, references: list[Reference]
) -> None:
    # A push whose references are all required proves its repository's row exists (they are
    # rows of the repository); one requiring none must create the row itself.
    record = ManifestRecord(
        "fresh/repository",
        manifest(7).digest,
        "application/vnd.oci.image.manifest.v1+json",
        manifest(7).content,
    )
    await db.put_manifest(record, references, "v1")
    assert await db.repository_exists("fresh/repository")
    assert "fresh/repository" in await db.list_repositories(100, None)
    assert await db.tag_target("fresh/repository", "v1") == record.digest
