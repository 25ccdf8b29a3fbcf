"""Where every byte and every row lives: the one description of Trustyard's storage.

On disk, under the data directory (`--data-dir`, default `./trustyard-data`)::

    <data-dir>/
    ├── metadata.sqlite            the metadata database (WAL mode; -wal and -shm beside it)
    ├── metadata.sqlite-writelock  flock held by the process writing the database (writers queue)
    ├── gc-runs.json               how many times `trustyard gc` ran here, and when last
    ├── blobs/                     the content-addressed blob store (filesystem backend)
    │   └── <algorithm>/           sha256 | sha512
    │       └── <hex[0:2]>/
    │           ├── <hex>          the blob's bytes, immutable; written by rename (a push of the
    │           │                  same verified bytes replaces it: that repairs a damaged file)
    │           └── <hex>.gc       the blob while garbage collection decides whether it goes
    │                              (put back or deleted right after; see docs/architecture.md)
    ├── uploads/
    │   ├── <upload-id>            bytes of an upload in progress (32 hex characters)
    │   └── <upload-id>.placing    a hard link of a verified upload, renamed onto its blob's name
    ├── quarantine/<alg>/<hex>     blobs `trustyard fsck` found corrupt, moved out of service
    ├── reserve                    a few MiB of zeros: deleted first by `trustyard gc` on a full
    │                              disk so the database can record deletions; made again after
    └── gc.lock                    held (flock) by the one garbage collection running

An upload is appended to `uploads/<id>`, fsynced, hashed, and only then renamed to its content
address: a blob file exists under `blobs/` only when its bytes match its name. Both folders are on
the same filesystem, so the rename is atomic. A crash leaves at worst an orphan upload file, which
garbage collection removes after its grace period.

With the S3 backend (`storage.backend: s3`), blobs and uploads live in the bucket instead, under
`storage.s3.prefix` (normalised to end in `/` unless empty)::

    s3://<bucket>/<prefix>
    ├── blobs/
    │   └── <algorithm>/<hex[0:2]>/<hex>   the blob, created only after the digest was verified:
    │                                      its bytes (a blob smaller than one part, PutObject),
    │                                      or an empty *pointer* whose metadata names its data
    │                                      object (`trustyard-data`, `trustyard-size`)
    ├── _data/
    │   └── <upload-id>/<generation:06d>   an upload's data object: a multipart upload its parts
    │                                      stream into while it is received, completed (whole,
    │                                      at once) after the digest is verified; a pointer
    │                                      names it from then on
    ├── _gc-trash/<algorithm>/<hex>        the blob (or its pointer) while garbage collection
    │                                      decides (as `.gc`)
    ├── _quarantine/<algorithm>/<hex>      blobs (or pointers) `trustyard fsck` found corrupt
    └── _uploads/
        └── <upload-id>/
            ├── state                      what was acknowledged: the parts sent (ETags, sizes)
            │                              and the pieces; rewritten after each request
            └── <start:020d>               a piece: acknowledged bytes [start, start + size)
                                           that did not fill a part when their request ended

Each client byte goes to S3 once, as part of the data object's multipart upload (pieces, at most
a part per request, go once more inside the next part). Nothing of an upload lives on local disk,
so any process can continue it. A crash leaves `_uploads/` objects and at worst an incomplete
multipart upload, which garbage collection removes after the stale-upload age; nothing is ever
visible under `blobs/` unverified. (`<data-dir>/s3-spool/` is where an older version spooled;
garbage collection removes what it left.) The one local copy: a proxied blob being fetched from
an upstream is also written to an unnamed file in `<data-dir>/uploads/` (`O_TMPFILE`, see
`storage.growing`) that clients joining the fetch read from; it has no name, so it vanishes when
the fetch ends and after a crash.

Every blob is stored once, whatever the number of repositories that link it. Manifests are small
(at most 4 MiB) and kept in the database with their exact bytes.

In the metadata database (the DDL is `SCHEMA` below)::

    repositories(name)                          a repository exists once something is linked to it
    blobs(digest, size, created_at, last_seen)  every committed blob in the store
    repository_blobs(repository, digest)        which repository may serve which blob
    manifests(repository, digest, media_type, artifact_type, subject, annotations, content,
              created_at, last_seen)      last_seen: the last push of the same bytes
    manifest_references(repository, manifest_digest, child_digest, kind)
                                                what a manifest points at: 'blob' (config, layer)
                                                or 'manifest' (index children); GC marks from here
    tags(repository, name, digest)              tag -> manifest digest in the same repository
                                                (indexed by digest: GC asks "is it tagged?")
    uploads(id, repository, started_at)         upload sessions in progress
    policy_decisions(id, time, identity, action, repository, reference, digest, outcome, rule,
                     reason, policy_version, repeats, last_time)
                                                the decision log: one row per policy decision
                                                (identical repeated allows folded into `repeats`)
    evidence_versions(repository, version)      bumped by every commit changing a repository's
                                                manifests or tags and when evidence (signature,
                                                scan) arrives: cached policy decisions are keyed
                                                by it
    signature_proofs(repository, image_digest, signature_digest, signer, valid, detail,
                     trust_version, verified_at)
                                                what each signature of an image proves (one row
                                                per trusted signer it proves, or one invalid row
                                                with signer NULL), under which trust config
    scan_reports(digest, scanner, tool, tool_version, scanned_at, received_at, format, summary)
                                                the latest vulnerability report per (manifest
                                                digest, configured scanner); a new one replaces it
    scan_findings(digest, scanner, vulnerability, severity, package, installed, fixed)
                                                its findings (deleted with the report)
    scan_signatures(signature, scanner, expires_at)
                                                HMAC signatures of stored scan posts, kept while
                                                their timestamp is inside the tolerance window:
                                                the same signed request again is a replay
    event_outbox(id, endpoint, repository, type, body, created_at, attempts, next_attempt_at,
                 state, last_error)             one row per (event, endpoint) to deliver, written
                                                in the transaction of the change it reports;
                                                deleted once delivered, 'failed' when given up;
                                                delivered in id order per (endpoint, repository)
    library_tag_history(name, tag, repository, digest, since, until)
                                                what each declared base-image library tag pointed
                                                at, from when until when (NULL: it still does)
    image_lineage(repository, image_digest, platform, library_name, library_tag, base_digest,
                  current, shared_layers, recorded_at)
                                                which library image each pushed image (per
                                                platform) was built on, and whether that base
                                                digest is still its tag's current one
    images_without_base(first_layer, repository, image_digest)
                                                pushed images with no lineage yet, by the first
                                                non-empty diff_id and layer digest of each
                                                platform: what a library tag's new digest
                                                re-traces (rows go once a base is recorded)
    gc_runs(started_at, finished_at, summary)   every garbage collection (health page, /metrics)
    shared_generations(name, generation)        one counter per kind of shared change ('evidence':
                                                any repository's evidence version moved), read by
                                                every process to forget what it remembers
                                                (`storage.metadata.coordination`)
    proxy_tags(repository, tag, validated_at)   when a proxied tag was last confirmed upstream
                                                (its manifest TTL and stale-if-error window)
    proxy_pulls(repository, digest, last_pulled)
                                                when a proxied manifest was last pulled (the
                                                cache's least recently pulled eviction order)

The policy, scan, event and library tables are additive (`CREATE ... IF NOT EXISTS`), so a
version-1 database gains them on open without a migration; added columns are in `MIGRATIONS`.

Nothing else in the code builds a path under the data directory or names a table: it asks here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from storage.oci.digests import ALGORITHMS, Digest

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);

CREATE TABLE IF NOT EXISTS repositories (
    name        TEXT PRIMARY KEY,
    created_at  REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS blobs (
    digest      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    last_seen   REAL NOT NULL          -- last upload, mount or link: GC grace counts from it
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS repository_blobs (
    repository  TEXT NOT NULL REFERENCES repositories(name) ON DELETE CASCADE,
    digest      TEXT NOT NULL REFERENCES blobs(digest) ON DELETE CASCADE,
    linked_at   REAL NOT NULL,
    PRIMARY KEY (repository, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS repository_blobs_digest ON repository_blobs(digest);

CREATE TABLE IF NOT EXISTS manifests (
    repository    TEXT NOT NULL REFERENCES repositories(name) ON DELETE CASCADE,
    digest        TEXT NOT NULL,
    media_type    TEXT NOT NULL,
    artifact_type TEXT,
    subject       TEXT,                -- digest of the manifest this one refers to (referrers API)
    annotations   TEXT,                -- JSON object or NULL
    size          INTEGER NOT NULL,
    content       BLOB NOT NULL,       -- the exact bytes pushed
    created_at    REAL NOT NULL,
    last_seen     REAL,                -- last push of these bytes: GC grace counts from it
    PRIMARY KEY (repository, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS manifests_subject ON manifests(repository, subject)
    WHERE subject IS NOT NULL;

CREATE TABLE IF NOT EXISTS manifest_references (
    repository      TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    child_digest    TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
    PRIMARY KEY (repository, manifest_digest, child_digest, kind),
    FOREIGN KEY (repository, manifest_digest)
        REFERENCES manifests(repository, digest) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS manifest_references_child
    ON manifest_references(child_digest, kind);

CREATE TABLE IF NOT EXISTS tags (
    repository  TEXT NOT NULL,
    name        TEXT NOT NULL,
    digest      TEXT NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (repository, name),
    FOREIGN KEY (repository, digest) REFERENCES manifests(repository, digest) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_digest ON tags(repository, digest);

CREATE TABLE IF NOT EXISTS uploads (
    id          TEXT PRIMARY KEY,
    repository  TEXT NOT NULL,
    started_at  REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS policy_decisions (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    time           REAL NOT NULL,      -- the first of the decisions folded into this row
    last_time      REAL NOT NULL,      -- the last of them
    repeats        INTEGER NOT NULL DEFAULT 1,
    identity       TEXT NOT NULL,
    action         TEXT NOT NULL CHECK (action IN ('push', 'pull', 'delete')),
    repository     TEXT NOT NULL,
    reference      TEXT NOT NULL,
    digest         TEXT NOT NULL,
    outcome        TEXT NOT NULL CHECK (outcome IN ('allow', 'deny', 'warn')),
    rule           TEXT,               -- the first failing rule, NULL when allowed
    reason         TEXT NOT NULL,
    policy_version TEXT NOT NULL       -- sha256 of the policy file
);
CREATE INDEX IF NOT EXISTS policy_decisions_repository ON policy_decisions(repository, id);
CREATE INDEX IF NOT EXISTS policy_decisions_time ON policy_decisions(time);

CREATE TABLE IF NOT EXISTS evidence_versions (
    repository  TEXT PRIMARY KEY,
    version     INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS signature_proofs (
    repository       TEXT NOT NULL,
    image_digest     TEXT NOT NULL,
    signature_digest TEXT NOT NULL,    -- sha256 of the signature (or bundle, envelope) bytes
    signer           TEXT,             -- the trust config's signer name, NULL when none
    valid            INTEGER NOT NULL CHECK (valid IN (0, 1)),
    detail           TEXT NOT NULL,    -- JSON: kind, reason, docker_reference, predicate_type
    trust_version    TEXT NOT NULL,    -- the trust config verified against: a new one re-verifies
    verified_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS signature_proofs_image
    ON signature_proofs(repository, image_digest);

CREATE TABLE IF NOT EXISTS scan_reports (
    digest       TEXT NOT NULL,        -- the manifest scanned (in any repository)
    scanner      TEXT NOT NULL,        -- the configured scanner that posted it
    tool         TEXT NOT NULL,        -- what the report says produced it: trivy, grype, ...
    tool_version TEXT NOT NULL,
    scanned_at   REAL NOT NULL,
    received_at  REAL NOT NULL,
    format       TEXT NOT NULL CHECK (format IN ('trivy', 'grype', 'generic')),
    summary      TEXT NOT NULL,        -- JSON: counts by severity, fixed and unfixed
    PRIMARY KEY (digest, scanner)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS scan_findings (
    digest        TEXT NOT NULL,
    scanner       TEXT NOT NULL,
    vulnerability TEXT NOT NULL,       -- CVE-..., GHSA-..., ...
    severity      TEXT NOT NULL,       -- critical | high | medium | low | negligible | unknown
    package       TEXT NOT NULL,
    installed     TEXT NOT NULL,
    fixed         TEXT,                -- NULL when no fixed version is known
    FOREIGN KEY (digest, scanner) REFERENCES scan_reports(digest, scanner) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS scan_findings_report ON scan_findings(digest, scanner);

CREATE TABLE IF NOT EXISTS scan_signatures (
    signature   TEXT PRIMARY KEY,      -- Trustyard-Signature of a stored post (sha256=<hex>)
    scanner     TEXT NOT NULL,
    expires_at  REAL NOT NULL          -- when its timestamp leaves the tolerance window
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS event_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint        TEXT NOT NULL,     -- the configured endpoint's name
    repository      TEXT NOT NULL,     -- delivery is ordered per (endpoint, repository)
    type            TEXT NOT NULL,     -- the CloudEvents type
    body            BLOB NOT NULL,     -- the exact bytes sent (and signed)
    created_at      REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS event_outbox_queue ON event_outbox(state, endpoint, repository, id);

CREATE TABLE IF NOT EXISTS library_tag_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,         -- library image name, `python`
    tag         TEXT NOT NULL,
    repository  TEXT NOT NULL,         -- where it is stored, `library/python`
    digest      TEXT NOT NULL,         -- the manifest or index the tag pointed at
    since       REAL NOT NULL,
    until       REAL                   -- NULL while the tag still points at `digest`
);
CREATE INDEX IF NOT EXISTS library_tag_history_tag ON library_tag_history(name, tag, since);
CREATE UNIQUE INDEX IF NOT EXISTS library_tag_history_current
    ON library_tag_history(name, tag) WHERE until IS NULL;

CREATE TABLE IF NOT EXISTS image_lineage (
    repository    TEXT NOT NULL,
    image_digest  TEXT NOT NULL,       -- the pushed manifest (an index: one row per platform)
    platform      TEXT NOT NULL,       -- os/arch[/variant], '' when unknown
    library_name  TEXT NOT NULL,
    library_tag   TEXT NOT NULL,
    base_digest   TEXT NOT NULL,       -- the digest the library tag pointed at
    current       INTEGER NOT NULL,    -- 1 while base_digest is still the tag's current digest
    shared_layers INTEGER NOT NULL,
    recorded_at   REAL NOT NULL,
    PRIMARY KEY (repository, image_digest, platform)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS image_lineage_base ON image_lineage(library_name, library_tag);

CREATE TABLE IF NOT EXISTS images_without_base (
    first_layer  TEXT NOT NULL,        -- first non-empty diff_id or layer digest of a platform
    repository   TEXT NOT NULL,
    image_digest TEXT NOT NULL,        -- the pushed manifest (an index: its platforms' layers)
    PRIMARY KEY (first_layer, repository, image_digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS images_without_base_image
    ON images_without_base(repository, image_digest);

CREATE TABLE IF NOT EXISTS shared_generations (
    name        TEXT PRIMARY KEY,      -- what changed: 'evidence'
    generation  INTEGER NOT NULL       -- bumped in the transaction of each such change
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS replica_files (
    instance    TEXT PRIMARY KEY,      -- one serving process: '<host> <pid>'
    files       TEXT NOT NULL,         -- JSON: {"policy": digest, "users": digest} as it runs
    seen_at     REAL NOT NULL          -- rewritten every few seconds while it serves
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS gc_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at  REAL NOT NULL,
    finished_at REAL NOT NULL,
    summary     TEXT NOT NULL          -- JSON: manifests, blobs, orphan_files, uploads, bytes_freed
);

CREATE TABLE IF NOT EXISTS proxy_tags (
    repository   TEXT NOT NULL,        -- a proxied repository (registry.proxy)
    tag          TEXT NOT NULL,
    validated_at REAL NOT NULL,        -- the upstream last confirmed the tag's digest then
    PRIMARY KEY (repository, tag)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS proxy_pulls (
    repository  TEXT NOT NULL,         -- a proxied repository (registry.proxy)
    digest      TEXT NOT NULL,         -- a manifest of it
    last_pulled REAL NOT NULL,
    PRIMARY KEY (repository, digest)
) WITHOUT ROWID;
"""


#: Columns added since version 1, each with the statements that add it to an older database:
#: (table, column, statements), applied on open when the column is missing.
MIGRATIONS: list[tuple[str, str, list[str]]] = [
    (
        "manifests",
        "last_seen",
        [
            "ALTER TABLE manifests ADD COLUMN last_seen REAL",
            "UPDATE manifests SET last_seen = created_at",
        ],
    ),
]


#: Versioned schema changes: the statements (SQLite's dialect, rewritten for PostgreSQL) that
#: bring a database from version `n - 1` to `n`, applied in order by `trustyard migrate`, each
#: version in one transaction with its new number. Version 1 is `SCHEMA` itself.
UPGRADES: dict[int, list[str]] = {}


@dataclass(frozen=True)
class DataLayout:
    """The paths under one data directory."""

    root: Path

    @property
    def database(self) -> Path:
        """The SQLite metadata database."""
        return self.root / "metadata.sqlite"

    @property
    def blobs(self) -> Path:
        """The root of the content-addressed blob store."""
        return self.root / "blobs"

    @property
    def uploads(self) -> Path:
        """The folder of uploads in progress."""
        return self.root / "uploads"

    def blob(self, digest: Digest) -> Path:
        """The file holding the blob with this digest."""
        return self.blobs / digest.algorithm / digest.hex[:2] / digest.hex

    def upload(self, upload_id: str) -> Path:
        """The file holding the bytes received so far for an upload."""
        return self.uploads / upload_id

    def blob_trash(self, digest: Digest) -> Path:
        """Where garbage collection moves a blob while it decides (beside the blob: one rename)."""
        return self.blob(digest).with_name(f"{digest.hex}.gc")

    def placing(self, upload_id: str) -> Path:
        """The hard link of a verified upload that is renamed onto its blob's name."""
        return self.uploads / f"{upload_id}.placing"

    @property
    def quarantine(self) -> Path:
        """Where `trustyard fsck` moves corrupt blobs."""
        return self.root / "quarantine"

    def quarantined(self, digest: Digest) -> Path:
        """The quarantined copy of a corrupt blob."""
        return self.quarantine / digest.algorithm / digest.hex

    @property
    def reserve(self) -> Path:
        """Space held back so a collection can run on a full disk."""
        return self.root / "reserve"

    @property
    def gc_lock(self) -> Path:
        """The lock file of the one garbage collection running on this data directory."""
        return self.root / "gc.lock"

    def digest_of_blob_path(self, path: Path) -> Digest | None:
        """The digest a blob file's path names, or None if the path is not a blob's."""
        try:
            relative = path.relative_to(self.blobs)
        except ValueError:
            return None
        parts = relative.parts
        if len(parts) != 3 or parts[2][:2] != parts[1]:
            return None
        return _valid_digest(parts[0], parts[2])

    def digest_of_trash_path(self, path: Path) -> Digest | None:
        """The digest of a blob in the trash (`<hex>.gc`), or None."""
        if path.suffix != ".gc":
            return None
        digest = self.digest_of_blob_path(path.with_suffix(""))
        return digest

    @property
    def s3_spool(self) -> Path:
        """Where an older version of the S3 backend spooled upload tails (cleaned up by GC)."""
        return self.root / "s3-spool"

    def spool(self, upload_id: str) -> Path:
        """An older version's spool folder of one S3 upload."""
        return self.s3_spool / upload_id

    def create(self) -> None:
        """Make the folders of a new data directory."""
        for folder in (self.root, self.blobs, self.uploads):
            folder.mkdir(parents=True, exist_ok=True)


def _valid_digest(algorithm: str, hex_: str) -> Digest | None:
    if ALGORITHMS.get(algorithm) != len(hex_) or hex_.strip("0123456789abcdef"):
        return None
    return Digest(algorithm, hex_)


def s3_prefix(prefix: str) -> str:
    """A configured key prefix as used in keys: empty, or ending in exactly one `/`."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


@dataclass(frozen=True)
class S3Layout:
    """The keys in one S3 bucket under one prefix (the picture is in this module's docstring)."""

    prefix: str = ""

    @property
    def blobs(self) -> str:
        """The key prefix of every committed blob."""
        return f"{self.prefix}blobs/"

    @property
    def uploads(self) -> str:
        """The key prefix of every upload's segments."""
        return f"{self.prefix}_uploads/"

    def blob(self, digest: Digest) -> str:
        """The key of the blob with this digest."""
        return f"{self.blobs}{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"

    def digest_of_blob_key(self, key: str) -> Digest | None:
        """The digest a blob key names, or None if the key is not a blob's."""
        if not key.startswith(self.blobs):
            return None
        parts = key[len(self.blobs) :].split("/")
        if len(parts) != 3 or parts[2][:2] != parts[1]:
            return None
        return _valid_digest(parts[0], parts[2])

    @property
    def trash(self) -> str:
        """The key prefix of blobs garbage collection is deciding about."""
        return f"{self.prefix}_gc-trash/"

    def blob_trash(self, digest: Digest) -> str:
        """The trash key of a blob."""
        return f"{self.trash}{digest.algorithm}/{digest.hex}"

    def digest_of_trash_key(self, key: str) -> Digest | None:
        """The digest a trash key names, or None."""
        algorithm, sep, hex_ = key[len(self.trash) :].partition("/")
        if not key.startswith(self.trash) or not sep:
            return None
        return _valid_digest(algorithm, hex_)

    def quarantined(self, digest: Digest) -> str:
        """The key of a blob `trustyard fsck` found corrupt."""
        return f"{self.prefix}_quarantine/{digest.algorithm}/{digest.hex}"

    def upload(self, upload_id: str) -> str:
        """The key prefix of one upload's state and pieces."""
        return f"{self.uploads}{upload_id}/"

    def upload_state(self, upload_id: str) -> str:
        """The key of an upload's state (`storage.s3_uploads.UploadState`)."""
        return f"{self.upload(upload_id)}state"

    def piece(self, upload_id: str, start: int) -> str:
        """The key of the piece of an upload that begins at byte `start`."""
        return f"{self.upload(upload_id)}{start:020d}"

    def upload_of_key(self, key: str) -> str | None:
        """The upload id of a key under `_uploads/`, or None."""
        if not key.startswith(self.uploads):
            return None
        upload_id, sep, rest = key[len(self.uploads) :].partition("/")
        return upload_id if sep and upload_id and rest else None

    @property
    def data(self) -> str:
        """The key prefix of every upload's data objects."""
        return f"{self.prefix}_data/"

    def upload_data_prefix(self, upload_id: str) -> str:
        """The key prefix of one upload's data objects."""
        return f"{self.data}{upload_id}/"

    def upload_data(self, upload_id: str, generation: int) -> str:
        """The key of an upload's data object (the multipart upload's key) of a generation."""
        return f"{self.upload_data_prefix(upload_id)}{generation:06d}"

    def upload_of_data(self, key: str) -> str | None:
        """The upload id of a data object's key, or None if the key is not one."""
        if not key.startswith(self.data):
            return None
        upload_id, sep, generation = key[len(self.data) :].partition("/")
        return upload_id if sep and upload_id and generation.isdigit() else None
