"""The policy gate the registry's handlers call: decide, cache, record, reload.

One `PolicyGate` lives in the application. It holds the current `Policy` (swapped whole on reload,
so a request sees one policy from start to end; the policy version covers the file and every key,
certificate and trusted root it references, and the file watch looks at all of them), caches pull
decisions by (policy version, repository, digest, evidence version), each until its `valid_until`
(when time alone can change it: a scan ageing out, an exception expiring, a certificate a
signature proof relied on expiring), and writes every decision to the log: denials at once, an
allowed push once its manifest is stored (`PolicyGate.pushed`), repeated
allowed pulls folded into one row with a count and flushed every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.blob_access import MAX_REFERENCING, BlobAccess, Reader, Standing
from policies.decisions import Action, Decision, Outcome, RuleVerdict, Verdict
from policies.engine import UNSAFE_ALLOW_EVERYTHING, Policy
from policies.errors import PolicyDenied
from policies.facts import ImageFacts, PolicyRequest, gather_facts
from policies.library.history import HistoryCache
from policies.library.lineage import Lineage
from policies.loader import PolicyError, load_policy
from storage.blobstore import BlobStore
from storage.metadata import DecisionRecord, LibraryHistory, ManifestRecord, MetadataDB, tag_key

log = logging.getLogger("trustyard.policy")

#: Cached pull decisions kept at most; the cache is emptied when it is full.
CACHE_SIZE = 100_000

#: How often folded decisions are written to the log.
FLUSH_INTERVAL = 1.0

NO_POLICY_WARNING = (
    "NO POLICY LOADED: every push, pull and delete is allowed and nothing is recorded. "
    "Start with --policy FILE (or policy.file in the configuration) to enforce one."
)

#: Facts for a request no rule matches: nothing is read.
_NO_FACTS = ImageFacts(digest="", media_type="")

_CacheKey = tuple[str, Action, str, str, int]
_FoldKey = tuple[str, str, str, str, str, str, str | None, str, str]


@dataclass(frozen=True)
class PushCheck:
    """A push the policy lets through, to be recorded once its manifest is stored: a push the
    storage then refuses (a blob unknown) leaves no "allow" row in the decision log."""

    policy: Policy  # the policy that decided: the push sees this one from check to store
    headers: dict[str, str] = field(default_factory=dict)  # to add to the answer (a `Warning`)
    request: PolicyRequest | None = None  # None: nothing was decided (no policy)
    verdict: Verdict | None = None
    # The image's lineage, when a rule needed it: recording the push reuses it.
    lineage: tuple[Lineage, ...] | None = None
    # Where the pushed tags pointed when the decision read (or assumed) them (an absent tag
    # pointed nowhere); None when no rule read them. The store re-checks it (`TagPremise`).
    tag_targets: Mapping[str, str] | None = None
    # The generation of the library history `lineage` was traced against (None: not traced).
    # The store re-checks it (`library_generation`).
    library_generation: int | None = None


@dataclass
class _Folded:
    first: float
    last: float
    count: int


def startup_policy(path: Path | None) -> Policy:
    """The policy to start with: the file at `path` (`PolicyError` if invalid: a server never
    starts on an invalid policy), or, without a file, allow-everything, said loudly."""
    if path is None:
        log.warning(NO_POLICY_WARNING)
        return UNSAFE_ALLOW_EVERYTHING
    policy = load_policy(path)
    log.info(
        "policy %s loaded: %d rules, mode %s, %s, version %s",
        path,
        len(policy.rules),
        policy.mode,
        policy.describe_default(),
        policy.version[:19],
    )
    return policy


class PolicyGate:
    """Checks manifest pushes, pulls and deletes against the current policy."""

    def __init__(
        self,
        db: MetadataDB,
        store: BlobStore,
        policy: Policy = UNSAFE_ALLOW_EVERYTHING,
        *,
        path: Path | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.policy = policy
        self.path = path
        self._stamp = self._stamps(policy)
        self._cache: dict[_CacheKey, Verdict] = {}
        self._evidence: dict[str, int] = {}
        self._changes: dict[str, int] = {}
        self._forgotten = 0  # how many times every remembered version was forgotten at once
        self._folded: dict[_FoldKey, _Folded] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._tag_locks: dict[tuple[str, str], list[Any]] = {}
        #: The tags whose lock in the database this process holds now (`confirm_tags`).
        self._tags_held: set[tuple[str, str]] = set()
        self.blobs = BlobAccess(db, self.pull_verdict)
        #: The library history pushes are traced against, checked by their store.
        self.library_history = HistoryCache()
        #: Called with every recorded decision (the registry's metrics count them).
        self.observers: list[Callable[[Verdict, PolicyRequest], None]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, poll_interval: float | None) -> None:
        """Start flushing the log and, if `poll_interval`, watching the file for changes."""
        self._tasks.append(asyncio.create_task(self._flush_forever()))
        if poll_interval and self.path is not None:
            self._tasks.append(asyncio.create_task(self._watch(poll_interval)))

    async def close(self) -> None:
        """Stop background work and write what is still folded."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.flush()

    def reload(self) -> bool:
        """Load the file again; on success swap the policy in whole, on failure keep the last good
        one and log why. Whether a new policy is in force."""
        if self.path is None:
            log.warning("reload asked but no policy file is configured; %s", NO_POLICY_WARNING)
            return False
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            self._stamp = self._stamps(self.policy)
            log.error(
                "policy reload refused; keeping version %s in force:\n%s",
                self.policy.version[:19],
                exc,
            )
            return False
        self._stamp = self._stamps(policy)
        if policy.version == self.policy.version:
            return False
        self.policy = policy
        self._cache.clear()
        self.blobs.clear()
        log.info(
            "policy %s reloaded: %d rules, %s, version %s",
            self.path,
            len(policy.rules),
            policy.describe_default(),
            policy.version[:19],
        )
        return True

    def _stamps(self, policy: Policy) -> tuple[tuple[int, int, int] | None, ...]:
        """What the watch compares: the policy file's and every file it references (a key, a
        certificate, a trusted root), so replacing one of them reloads the policy."""
        if self.path is None:
            return ()
        return tuple(_stamp(Path(p)) for p in (self.path, *policy.files))

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._stamps(self.policy) != self._stamp:
                self.reload()

    @contextlib.asynccontextmanager
    async def tag_guard(
        self, repository: str, tag: str | None, *, across_processes: bool = True
    ) -> AsyncIterator[None]:
        """Hold while a change by tag is checked and stored: changes to one tag are decided one
        after the other, so a race cannot move an immutable tag. Changes in this process queue
        on a lock of their own first; the holder then takes the tag's lock in the database
        (`MetadataDB.exclusive`), which every other worker and replica takes too, unless not
        `across_processes`: a push whose store re-checks the tag inside its transaction
        (`TagPremise`) needs no lock of the database, and saves its round trips."""
        if tag is None or self.policy.allows_everything:
            yield
            return
        key = (repository, tag)
        entry = self._tag_locks.get(key)
        if entry is None:
            entry = self._tag_locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with contextlib.AsyncExitStack() as held:
                await held.enter_async_context(entry[0])
                if across_processes:
                    await held.enter_async_context(self.db.exclusive(tag_key(repository, tag)))
                    self._tags_held.add(key)
                    held.callback(self._tags_held.discard, key)
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._tag_locks[key]

    async def confirm_tags(self, repository: str, tags: Iterable[str | None]) -> None:
        """Just before a change guarded by `tag_guard` commits: raise `LockLost` if the lock of
        any of its tags was lost meanwhile (a PostgreSQL lock connection dropped), so nothing is
        stored that another replica may be deciding at the same time."""
        for tag in tags:
            if tag is not None and (repository, tag) in self._tags_held:
                await self.db.confirm(tag_key(repository, tag))

    # -- evidence ----------------------------------------------------------------------------

    async def evidence_version(self, repository: str) -> int:
        """The repository's evidence version (read from the database once, then remembered)."""
        version = self._evidence.get(repository)
        if version is None:
            changes, forgotten = self._changes.get(repository, 0), self._forgotten
            version = await self.db.evidence_version(repository)
            # A change that landed while we read makes what we read stale: do not keep it.
            if self._changes.get(repository, 0) == changes and self._forgotten == forgotten:
                self._evidence[repository] = version
        return version

    def forget_evidence(self) -> None:
        """Forget every remembered evidence version: another process changed evidence (its
        shared generation moved, `storage.metadata.generations`)."""
        self._forgotten += 1
        self._evidence.clear()

    async def evidence_arrived(self, repository: str) -> None:
        """Evidence about the repository arrived outside a manifest change (a scan result): bump
        its evidence version so quarantined images are decided afresh on their next pull."""
        await self.db.bump_evidence(repository)
        self.evidence_changed(repository)

    def evidence_changed(self, repository: str) -> None:
        """Forget the remembered evidence version after the repository changed (the database
        row was bumped in the same transaction as the change)."""
        self._changes[repository] = self._changes.get(repository, 0) + 1
        self._evidence.pop(repository, None)

    # -- deciding ----------------------------------------------------------------------------

    async def evaluate(
        self, request: PolicyRequest, media_type: str, content: bytes, policy: Policy | None = None
    ) -> Verdict:
        """The verdict of the policy (default: the current one) on a request, uncached, unlogged."""
        verdict, _ = await self._decide(request, media_type, content, policy or self.policy)
        return verdict

    async def _decide(
        self,
        request: PolicyRequest,
        media_type: str,
        content: bytes,
        policy: Policy,
        assumed_targets: Mapping[str, str | None] | None = None,
        history: LibraryHistory | None = None,
        decoded: dict[str, Any] | None = None,
    ) -> tuple[Verdict, ImageFacts]:
        """The verdict of `policy` on a request, with the facts it was drawn from (a push's
        tags and library history as assumed, and its manifest as its parse decoded it, when
        given: `gather_facts`)."""
        matching = policy.matching(request)
        if not matching:
            return policy.evaluate(request, _NO_FACTS, matching), _NO_FACTS
        needs = frozenset().union(*(rule.needs for rule, _ in matching))
        facts = await gather_facts(
            request,
            media_type,
            content,
            needs,
            self.db,
            self.store,
            policy.library,
            policy.exempt_types,
            assumed_targets,
            history,
            decoded,
        )
        return policy.evaluate(request, facts, matching), facts

    async def check_push(
        self,
        request: PolicyRequest,
        media_type: str,
        content: bytes,
        *,
        assumed_targets: Mapping[str, str | None] | None = None,
        history: LibraryHistory | None = None,
        decoded: dict[str, Any] | None = None,
    ) -> PushCheck:
        """Decide a push: record and raise DENIED, or return what `pushed` records once the
        manifest is stored (with the headers to add).

        The push may give where its tags point (`assumed_targets`) and the library `history` to
        trace its lineage against, instead of reading them: an allowed push's store checks
        they still hold in its transaction (`PushCheck.tag_targets`, `library_generation`),
        and a denial is never given on them: a push they would deny is decided again on the
        tags and the history read now. `decoded`: the manifest as the push's parse decoded it
        from `content` (`ParsedManifest.document`), read instead of decoding it again."""
        policy = self.policy
        if policy.allows_everything:
            return PushCheck(policy)
        verdict, facts = await self._decide(
            request, media_type, content, policy, assumed_targets, history, decoded
        )
        assumed = (assumed_targets is not None and facts.tags_read) or (
            history is not None and facts.lineage is not None
        )
        if verdict.outcome is Outcome.DENY and assumed:
            if history is not None and facts.lineage is not None:
                history = await self.library_history.refresh(self.db)
            verdict, facts = await self._decide(
                request, media_type, content, policy, None, history, decoded
            )
        if verdict.outcome is Outcome.DENY:
            await self._record(verdict, request)
        targets = facts.tag_targets if facts.tags_read else None
        # Traced against `history`: its store checks it is still current. (Without one, the
        # history was read as the trace went, which pins no generation: nothing to check.)
        generation = None if facts.lineage is None or history is None else history.generation
        return PushCheck(
            policy, _enforce(verdict), request, verdict, facts.lineage, targets, generation
        )

    def push_decision(self, check: PushCheck) -> DecisionRecord | None:
        """The decision-log row of a push `check_push` let through, written in the push's own
        transaction: it exists exactly when the manifest does (a push the storage refuses
        leaves no "allow" row), at no commit of its own."""
        if check.request is None or check.verdict is None:
            return None
        return _row(check.verdict, check.request, time.time())

    def pushed(self, check: PushCheck) -> None:
        """Tell the decision observers (metrics) of a push stored with its decision row."""
        if check.request is not None and check.verdict is not None:
            self._observe(check.verdict, check.request)

    async def check_pull(
        self,
        repository: str,
        reference: str,
        record: ManifestRecord,
        identity: str,
        reader: Callable[[], str | None] | None = None,
    ) -> dict[str, str]:
        """Decide (from the cache when possible) and record a pull; raise DENIED or return
        headers. `reader`, asked only when the image is quarantined: why the caller may read it
        all the same (see `policies.quarantine`), or None; such a read is recorded as allowed
        with that reason."""
        policy = self.policy
        if policy.allows_everything:
            return {}
        verdict, request = await self.pull_verdict(policy, repository, reference, record, identity)
        why = reader() if reader is not None and verdict.outcome is Outcome.DENY else None
        if why is not None:
            reason = f"{why} ({denial_message(verdict)})"
            await self._record(verdict, request, reader=reason)
            return {"Warning": _warning(reason)}
        await self._record(verdict, request)
        return _enforce(verdict)

    async def pull_verdict(
        self,
        policy: Policy,
        repository: str,
        reference: str,
        record: ManifestRecord,
        identity: str,
    ) -> tuple[Verdict, PolicyRequest]:
        """The verdict of `policy` on pulling `record`, from the cache keyed by (policy
        version, repository, digest, evidence version) when it is still valid; unrecorded."""
        key = (
            policy.version,
            Action.PULL,
            repository,
            record.digest,
            await self.evidence_version(repository),
        )
        verdict = self._cache.get(key)
        until = None if verdict is None else verdict.valid_until
        if until is not None and time.time() >= until:
            verdict = None  # time alone may have changed the answer: decide afresh
        request = PolicyRequest(Action.PULL, repository, reference, record.digest, (), identity)
        if verdict is None:
            tags = tuple(await self.db.tags_of(repository, record.digest))
            request = PolicyRequest(
                Action.PULL, repository, reference, record.digest, tags, identity
            )
            verdict = await self.evaluate(request, record.media_type, record.content, policy)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = verdict
        return verdict, request

    async def check_delete(self, request: PolicyRequest, record: ManifestRecord) -> dict[str, str]:
        """Decide and record a delete; raise DENIED or return headers."""
        policy = self.policy
        if policy.allows_everything:
            return {}
        verdict = await self.evaluate(request, record.media_type, record.content, policy)
        await self._record(verdict, request)
        return _enforce(verdict)

    # -- blobs -------------------------------------------------------------------------------

    def may_read_quarantined(self, repository: str, reader: Reader) -> bool:
        """Whether `reader` may read the content of images the pull rules refuse in
        `repository` (a producer signing what it pushed): the reader's own answer, asked only
        now; nobody when the handler gives none."""
        why = reader.quarantine_reader() if reader.quarantine_reader is not None else None
        if why is not None:
            log.info("blob of a quarantined image of %s read: %s", repository, why)
        return why is not None

    async def check_blob_read(
        self, repository: str, digest: str, reader: Reader, *, content: bool = True
    ) -> None:
        """Let a blob be read (GET, mounted elsewhere; HEAD with `content` false) only if it is
        part of an image the policy lets be pulled from `repository`; else record the refusal
        and raise DENIED.

        Whoever may push to the repository may always learn that a blob is there (HEAD): clients
        check each blob before and after uploading it, also when an image they push shares
        layers with a quarantined one; no bytes leave that way.
        """
        policy = self.policy
        if policy.allows_everything:
            return
        found = await self.blobs.standing(
            policy, repository, digest, await self.evidence_version(repository)
        )
        if found.standing is Standing.PULLABLE or (reader.producer and not content):
            return
        if found.standing is Standing.QUARANTINED:
            if self.may_read_quarantined(repository, reader):
                return
            assert found.verdict is not None and found.manifest is not None
            verdict = found.verdict
            message = (
                f"blob {digest} is only part of images the policy refuses to pull from "
                f"{repository}: {denial_message(verdict)}"
            )
            manifest = found.manifest
        else:
            if reader.producer:
                return
            rule = found.rule
            assert rule is not None
            reason = (
                f"blob {digest} is not part of any image of {repository} that may be pulled "
                "(only those who may push to it can read it)"
            )
            verdict = Verdict(
                Action.PULL,
                repository,
                digest,
                policy.version,
                (RuleVerdict(rule, "enforce", (Decision.deny(reason),)),),
            )
            message = f'rule "{rule}": {reason}'
            manifest = digest
        request = PolicyRequest(Action.PULL, repository, digest, manifest, (), reader.identity)
        await self._record(verdict, request)
        raise _denied(verdict, message, {"blob": digest})

    async def check_needed(self, repository: str, digest: str, kind: str, identity: str) -> None:
        """Refuse (DENIED, naming the rule) to delete a blob or an index child (`kind` 'blob' or
        'manifest') that a manifest the policy does not let be deleted needs: an immutable
        release keeps its content."""
        policy = self.policy
        if policy.allows_everything:
            return
        needing = await self.blobs.needing(repository, digest, kind, MAX_REFERENCING)
        if needing is None:
            raise PolicyDenied(
                f"{kind} {digest} is needed by more than {MAX_REFERENCING} manifests of "
                f"{repository}; delete those first",
                {kind: digest},
            )
        for manifest in needing:
            record = await self.db.get_manifest(repository, manifest)
            if record is None:
                continue
            tags = tuple(await self.db.tags_of(repository, manifest))
            request = PolicyRequest(Action.DELETE, repository, manifest, manifest, tags, identity)
            verdict = await self.evaluate(request, record.media_type, record.content, policy)
            if verdict.outcome is not Outcome.DENY:
                continue
            named = f" ({', '.join(tags)})" if tags else ""
            await self._record(
                verdict, PolicyRequest(Action.DELETE, repository, digest, manifest, tags, identity)
            )
            raise _denied(
                verdict,
                f"{kind} {digest} is needed by manifest {manifest}{named}, which the policy "
                f"does not let be deleted: {denial_message(verdict)}",
                {kind: digest, "needed_by": manifest},
            )

    # -- the decision log --------------------------------------------------------------------

    def _observe(self, verdict: Verdict, request: PolicyRequest) -> None:
        for observe in self.observers:
            observe(verdict, request)

    async def _record(
        self, verdict: Verdict, request: PolicyRequest, *, reader: str | None = None
    ) -> None:
        """Log a decision; `reader`: a quarantined image read by who may (logged as allowed,
        with this reason)."""
        self._observe(verdict, request)
        outcome = Outcome.ALLOW if reader is not None else verdict.outcome
        reason = reader if reader is not None else verdict.reason
        now = time.time()
        if outcome is Outcome.DENY or request.action is not Action.PULL:
            await self.db.record_decisions([_row(verdict, request, now)])
            return
        key: _FoldKey = (
            request.identity,
            request.action.value,
            request.repository,
            request.reference,
            request.digest,
            outcome.value,
            verdict.rule,
            reason,
            verdict.policy_version,
        )
        folded = self._folded.get(key)
        if folded is None:
            self._folded[key] = _Folded(now, now, 1)
        else:
            folded.last = now
            folded.count += 1

    async def flush(self) -> None:
        """Write folded decisions to the log now."""
        if not self._folded:
            return
        folded, self._folded = self._folded, {}
        try:
            await self.db.record_decisions(_unfold(folded.items()))
        except BaseException:
            # Not written (a full disk, a cancelled close): keep them for the next flush, merged
            # with what was folded meanwhile, so a failed write loses no decision.
            for key, earlier in folded.items():
                later = self._folded.get(key)
                if later is not None:
                    earlier.last, earlier.count = later.last, earlier.count + later.count
                self._folded[key] = earlier
            raise

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush()
            except Exception:
                log.exception("writing the decision log failed")


def _unfold(items: Iterable[tuple[_FoldKey, _Folded]]) -> list[DecisionRecord]:
    return [
        DecisionRecord(
            time=f.first,
            last_time=f.last,
            repeats=f.count,
            identity=k[0],
            action=k[1],
            repository=k[2],
            reference=k[3],
            digest=k[4],
            outcome=k[5],
            rule=k[6],
            reason=k[7],
            policy_version=k[8],
        )
        for k, f in items
    ]


def _row(verdict: Verdict, request: PolicyRequest, now: float) -> DecisionRecord:
    return DecisionRecord(
        time=now,
        last_time=now,
        identity=request.identity,
        action=request.action.value,
        repository=request.repository,
        reference=request.reference,
        digest=request.digest,
        outcome=verdict.outcome.value,
        rule=verdict.rule,
        reason=verdict.reason,
        policy_version=verdict.policy_version,
    )


def denial_message(verdict: Verdict) -> str:
    """What the client prints after `denied: `: each enforcing rule that failed, with why."""
    return "; ".join(r.message() for r in verdict.failures if r.mode == "enforce")


def _enforce(verdict: Verdict) -> dict[str, str]:
    outcome = verdict.outcome
    if outcome is Outcome.ALLOW:
        return {}
    if outcome is Outcome.DENY:
        raise _denied(verdict, denial_message(verdict))
    text = "; ".join(r.message() for r in verdict.failures)
    return {"Warning": _warning(f"policy (warn mode): {text}")}


def _warning(text: str) -> str:
    """A `Warning` header value (RFC 9111 code 299) carrying `text`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 trustyard "{escaped}"'


def _denied(verdict: Verdict, message: str, extra: dict[str, str] | None = None) -> PolicyDenied:
    """DENIED with the failing rules of `verdict` in the detail."""
    detail: dict[str, Any] = {
        **(extra or {}),
        "policy_version": verdict.policy_version,
        "rules": [{"rule": r.rule, "mode": r.mode, "reason": r.reason} for r in verdict.failures],
    }
    return PolicyDenied(message, detail)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    # The inode too: a file replaced by rename (how editors and config tools write) is new even
    # when its size and modification time match the old one's.
    return stat.st_mtime_ns, stat.st_size, stat.st_ino
