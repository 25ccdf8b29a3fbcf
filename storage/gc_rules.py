"""What garbage collection may remove: each rule written once, in SQL.

The same text serves three purposes, so they can never disagree:

* to *mark*: a read that lists candidates, without any lock;
* to *re-decide*: the `WHERE` of the `DELETE` that removes one candidate, inside the write
  transaction, so a tag, index, referrer, push or upload that appeared since the mark saves it;
* to *simulate* (`gc --dry-run`): the same rules read against a TEMP table `gc_gone` of what the
  simulation already removed, so the dry run follows the whole cascade.

A manifest may go when it is older than the cutoff (counted from its last push), no tag names
it, no index of its repository (that is not itself going) lists it, no referrer pushed within the
grace period names it as subject, and its own subject (if any) is gone. A blob may go when it was
last uploaded, mounted or referenced before the cutoff and no manifest (that is not itself going)
references it: config, layer, foreign layer, in any repository.
"""

from __future__ import annotations


def _not_gone(repository: str, digest: str, simulated: bool) -> str:
    if not simulated:
        return ""
    return (
        " AND NOT EXISTS (SELECT 1 FROM temp.gc_gone g "
        f"WHERE g.repository = {repository} AND g.digest = {digest})"
    )


def manifest_collectable(m: str, *, simulated: bool = False) -> str:
    """The condition under which manifest row `m` may be deleted (parameter `:cutoff`)."""
    return (
        f"COALESCE({m}.last_seen, {m}.created_at) < :cutoff "
        f"AND NOT EXISTS (SELECT 1 FROM tags t "
        f"  WHERE t.repository = {m}.repository AND t.digest = {m}.digest) "
        f"AND NOT EXISTS (SELECT 1 FROM manifest_references r "
        f"  WHERE r.repository = {m}.repository AND r.child_digest = {m}.digest "
        f"  AND r.kind = 'manifest'{_not_gone('r.repository', 'r.manifest_digest', simulated)}) "
        # By the partial index on subjects: one lookup, not a scan of the repository.
        f"AND NOT EXISTS (SELECT 1 FROM manifests f INDEXED BY manifests_subject "
        f"  WHERE f.repository = {m}.repository AND f.subject = {m}.digest "
        f"  AND f.subject IS NOT NULL AND COALESCE(f.last_seen, f.created_at) >= :cutoff) "
        f"AND ({m}.subject IS NULL OR NOT EXISTS (SELECT 1 FROM manifests s "
        f"  WHERE s.repository = {m}.repository AND s.digest = {m}.subject"
        f"{_not_gone('s.repository', 's.digest', simulated)}))"
    )


def blob_collectable(b: str, *, simulated: bool = False) -> str:
    """The condition under which blob row `b` may be deleted (parameter `:cutoff`)."""
    return (
        f"{b}.last_seen < :cutoff AND NOT EXISTS (SELECT 1 FROM manifest_references r "
        f"  WHERE r.child_digest = {b}.digest AND r.kind = 'blob'"
        f"{_not_gone('r.repository', 'r.manifest_digest', simulated)})"
    )


#: Manifests to delete, a page at a time in key order after (`:repository`, `:digest`).
MARK_MANIFESTS = (
    "SELECT m.repository, m.digest FROM manifests m "
    "WHERE (m.repository, m.digest) > (:repository, :digest) AND "
    f"{manifest_collectable('m')} ORDER BY m.repository, m.digest LIMIT :limit"
)

#: Delete one manifest (its references and tags cascade) if the rule still holds.
DELETE_MANIFEST = (
    "DELETE FROM manifests AS m WHERE m.repository = :repository AND m.digest = :digest AND "
    f"{manifest_collectable('m')}"
)

#: Blobs to delete, a page at a time in digest order after `:digest`.
MARK_BLOBS = (
    "SELECT b.digest, b.size FROM blobs b WHERE b.digest > :digest AND "
    f"{blob_collectable('b')} ORDER BY b.digest LIMIT :limit"
)

#: Delete one blob's row (its repository links cascade) if the rule still holds.
DELETE_BLOB = f"DELETE FROM blobs AS b WHERE b.digest = :digest AND {blob_collectable('b')}"


def blob_unlinked(b: str) -> str:
    """The condition that no repository links blob row `b` (a link is an upload, mount or
    proxy fetch, which may belong to a push still under way)."""
    return f"NOT EXISTS (SELECT 1 FROM repository_blobs l WHERE l.digest = {b}.digest)"


def mark_unlinked_blobs(count: int) -> str:
    """(digest, size) of those of `count` digests (parameters `:d0`...) that the blob rule lets
    go and no repository links: what evicting proxied content can free at once."""
    marks = ", ".join(f":d{i}" for i in range(count))
    return (
        f"SELECT b.digest, b.size FROM blobs b WHERE b.digest IN ({marks}) "
        f"AND {blob_collectable('b')} AND {blob_unlinked('b')}"
    )


#: Delete one blob's row if the rule still holds and no repository links it.
DELETE_UNLINKED_BLOB = f"{DELETE_BLOB} AND {blob_unlinked('b')}"

#: The simulation's table of manifests already removed.
SIMULATION_TABLE = (
    "CREATE TEMP TABLE gc_gone (repository TEXT NOT NULL, digest TEXT NOT NULL, "
    "PRIMARY KEY (repository, digest)) WITHOUT ROWID"
)

#: One round of the simulated cascade: every manifest collectable once the gone ones are gone.
SIMULATE_MANIFESTS = (
    "INSERT INTO temp.gc_gone (repository, digest) SELECT m.repository, m.digest "
    f"FROM manifests m WHERE {manifest_collectable('m', simulated=True)}"
    f"{_not_gone('m.repository', 'm.digest', True)}"
)

#: The blobs the simulated run would delete.
SIMULATE_BLOBS = (
    "SELECT b.digest, b.size FROM blobs b WHERE "
    f"{blob_collectable('b', simulated=True)} ORDER BY b.digest"
)

#: Delete an upload session if it is still stale.
DELETE_UPLOAD = "DELETE FROM uploads WHERE id = :id AND started_at < :cutoff"
