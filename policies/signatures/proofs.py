"""What an image's signatures prove, verified once and recorded in the metadata database
(`signature_proofs`, described in `storage.layout`).

Signatures are verified when they are pushed (the `.sig` tag or a referrer) and, failing that,
the first time a pull needs them. The rows carry the trust config's version: after a policy reload
that changes `trust:` (or a key or trusted root file it names), the next uncached pull verifies
again under the new config. They also carry a fingerprint of where the image's signatures lived
when they were verified (`discovery.sources`): once a signature manifest is deleted, untagged,
replaced or added, the recorded proofs no longer count and the signatures are verified again, so a
proof dies with the signature that produced it, also across a restart. A pull whose image's proofs
are recorded costs three indexed reads and no cryptography.

Verification is CPU work: it runs on a small pool of threads (`VERIFY_WORKERS`), off the event
loop, within the limits `discovery` sets per manifest and per image, and a signature whose fields
are malformed in a way no verifier foresaw proves nothing (it is never a server error).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from policies.signatures import bundles, cosign, notation
from policies.signatures.discovery import (
    NOTATION_ENVELOPES,
    SIGSTORE_BUNDLE_TYPES,
    SignatureManifest,
    find_signatures,
    signed_subject,
    sources,
)
from policies.signatures.discovery import push_problem as _limits_problem
from policies.signatures.findings import Finding, invalid
from policies.signatures.trust import TrustConfig
from storage.blobstore import BlobStore
from storage.metadata import MetadataDB, ProofRow
from storage.oci.media_types import SIMPLE_SIGNING

#: The fact name prefix a `signature` requirement needs: `signatures:<trust version>`.
FACT_PREFIX = "signatures:"

#: Trust configs by version, registered by the loader so facts can be gathered by name.
_TRUSTS: dict[str, TrustConfig] = {}

#: Parent indexes whose proofs are read for a platform image pulled by digest, at most.
MAX_PARENTS = 16

#: Threads verifying signatures: at most this many verifications run at once, whatever the
#: number of pushes, and none on the event loop.
VERIFY_WORKERS = 2

_POOL = ThreadPoolExecutor(max_workers=VERIFY_WORKERS, thread_name_prefix="trustyard-verify")

log = logging.getLogger("trustyard.signatures")

#: Verifications in progress from pulls, by (database, trust version, repository, image).
_VERIFYING: dict[tuple[int, str, str, str], asyncio.Future[list[Finding]]] = {}


def register_trust(trust: TrustConfig) -> str:
    """Remember `trust` and return the fact name a requirement using it needs."""
    _TRUSTS[trust.version] = trust
    return FACT_PREFIX + trust.version


def verify_manifest(
    trust: TrustConfig, image_digest: str, manifest: SignatureManifest
) -> list[Finding]:
    """Every finding of the signature layers of one signature manifest (pure CPU work)."""
    if manifest.problem is not None:
        return [invalid(manifest.digest, "signature manifest", manifest.problem)]
    found: list[Finding] = []
    for layer in manifest.layers:
        try:
            if layer.media_type == SIMPLE_SIGNING:
                found += cosign.verify_layer(trust, image_digest, layer.content, layer.annotations)
            elif layer.media_type in SIGSTORE_BUNDLE_TYPES:
                found += bundles.verify_layer(trust, image_digest, layer.content)
            elif layer.media_type in NOTATION_ENVELOPES:
                found += notation.verify_layer(trust, image_digest, layer.media_type, layer.content)
            else:  # pragma: no cover - discovery only returns the types above
                why = f"unknown media type {layer.media_type}"
                found.append(invalid(layer.digest, "unknown", why))
        except Exception as exc:  # a malformed signature proves nothing, never a 500
            log.warning("signature layer %s of %s: %r", layer.digest, manifest.digest, exc)
            why = "nested too deeply" if isinstance(exc, RecursionError) else type(exc).__name__
            found.append(
                invalid(
                    layer.digest,
                    "malformed",
                    f"a malformed signature layer ({layer.media_type}: {why}); not verified",
                )
            )
    return found


def _verify_all(
    trust: TrustConfig, image_digest: str, manifests: list[SignatureManifest]
) -> list[Finding]:
    findings: list[Finding] = []
    for manifest in manifests:
        findings += verify_manifest(trust, image_digest, manifest)
    return findings


async def verify_and_record(
    db: MetadataDB, store: BlobStore, trust: TrustConfig, repository: str, image_digest: str
) -> list[Finding]:
    """Find and verify every signature of an image, replace its recorded proofs, return them."""
    where = await sources(db, repository, image_digest)
    manifests = await find_signatures(db, store, repository, image_digest)
    findings: list[Finding] = []
    if manifests:
        loop = asyncio.get_running_loop()
        findings = await loop.run_in_executor(_POOL, _verify_all, trust, image_digest, manifests)
    await record(db, trust, repository, image_digest, findings, where)
    return findings


async def record(
    db: MetadataDB,
    trust: TrustConfig,
    repository: str,
    image_digest: str,
    findings: list[Finding],
    where: str = "",
) -> None:
    """Replace the recorded proofs of an image (a row with empty digest marks "none found"),
    verified from the signatures `where` fingerprints (`discovery.sources`)."""
    now = time.time()
    proofs = [
        ProofRow(
            f.signature_digest,
            f.signer,
            f.valid,
            {
                "kind": f.kind,
                "reason": f.detail,
                "docker_reference": f.docker_reference,
                "predicate_type": f.predicate_type,
                "valid_until": f.valid_until,
                "sources": where,
            },
            trust.version,
            now,
        )
        for f in findings
    ] or [ProofRow("", None, False, {"sources": where}, trust.version, now)]
    await db.replace_signature_proofs(repository, image_digest, proofs)


async def recorded(
    db: MetadataDB, trust: TrustConfig, repository: str, image_digest: str
) -> list[Finding] | None:
    """The proofs recorded for an image under `trust` from the signatures it has now, or None
    when it must be verified."""
    rows = await db.signature_proofs(repository, image_digest)
    if not rows or any(row.trust_version != trust.version for row in rows):
        return None
    metas: list[Mapping[str, Any]] = [row.detail for row in rows]
    where = await sources(db, repository, image_digest)
    if any(meta.get("sources") != where for meta in metas):
        return None  # a signature was deleted, replaced or added since: verify again
    found = []
    for row, meta in zip(rows, metas, strict=True):
        digest, signer, valid = row.signature_digest, row.signer, row.valid
        if not digest:
            continue
        until = meta.get("valid_until")
        found.append(
            Finding(
                digest,
                str(meta.get("kind", "")),
                bool(valid),
                signer,
                str(meta.get("reason", "")),
                meta.get("docker_reference"),
                meta.get("predicate_type"),
                float(until) if isinstance(until, int | float) else None,
            )
        )
    return found


async def findings_for(
    db: MetadataDB, store: BlobStore, trust: TrustConfig, repository: str, image_digest: str
) -> list[Finding]:
    """The recorded proofs of an image, verifying its signatures first when they are not.

    Many pulls of one image that all find its proofs stale (a referrer was just pushed) share one
    verification instead of each queueing its own."""
    known = await recorded(db, trust, repository, image_digest)
    if known is not None:
        return known
    key = (id(db), trust.version, repository, image_digest)
    running = _VERIFYING.get(key)
    if running is not None:
        return list(await asyncio.shield(running))
    task = asyncio.ensure_future(verify_and_record(db, store, trust, repository, image_digest))
    _VERIFYING[key] = task
    try:
        return list(await asyncio.shield(task))
    finally:
        if _VERIFYING.get(key) is task:
            del _VERIFYING[key]


@dataclass(frozen=True)
class SignatureEvidence:
    """What the `signature` rule sees of an image: its own proofs, its platform images' (an
    index), and the proofs of indexes that contain it (a platform image pulled by digest)."""

    image: tuple[Finding, ...]
    children: Mapping[str, tuple[Finding, ...]] = field(default_factory=dict)
    parents: Mapping[str, tuple[Finding, ...]] = field(default_factory=dict)


async def gather(
    db: MetadataDB,
    store: BlobStore,
    trust: TrustConfig,
    repository: str,
    digest: str,
    manifest: Mapping[str, Any],
) -> SignatureEvidence:
    """The evidence for one image (and its children or parent indexes)."""
    image = tuple(await findings_for(db, store, trust, repository, digest))
    children: dict[str, tuple[Finding, ...]] = {}
    entries = manifest.get("manifests")
    if isinstance(entries, list):
        for entry in entries[:128]:
            if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
                child = entry["digest"]
                children[child] = tuple(await findings_for(db, store, trust, repository, child))
    parents: dict[str, tuple[Finding, ...]] = {}
    # Read also when the image has proofs of its own: they may be by signers the rule does not
    # ask for, and a platform image is accepted when an index holding it is signed.
    if not children:
        for parent in await db.parent_indexes(repository, digest, MAX_PARENTS):
            parents[parent] = tuple(await findings_for(db, store, trust, repository, parent))
    return SignatureEvidence(image, children, parents)


async def gather_signatures(
    needs: frozenset[str],
    repository: str,
    digest: str,
    manifest: Mapping[str, Any],
    db: MetadataDB,
    store: BlobStore,
) -> dict[str, SignatureEvidence]:
    """Signature evidence for every trust config named in `needs` (by its version)."""
    out: dict[str, SignatureEvidence] = {}
    for need in needs:
        if need.startswith(FACT_PREFIX) and need[len(FACT_PREFIX) :] in _TRUSTS:
            version = need[len(FACT_PREFIX) :]
            out[version] = await gather(db, store, _TRUSTS[version], repository, digest, manifest)
    return out


class _Requiring(Protocol):
    @property
    def requirements(self) -> Sequence[object]: ...


class _Signed(Protocol):
    @property
    def signed_by(self) -> Sequence[str]: ...


class _Library(Protocol):
    @property
    def images(self) -> Sequence[_Signed]: ...


class SignaturePolicy(Protocol):
    """What this module reads of a loaded policy (`policies.engine.Policy`, a floor above it:
    the engine's facts gather the proofs recorded here): what it verifies signatures against,
    found once per policy (`signature_checks`)."""

    @property
    def signatures(self) -> SignatureChecks: ...


@dataclass(frozen=True)
class SignatureChecks:
    """What a policy verifies signatures against: its `signature` requirements' distinct trust
    configs, and whether an image of its library is `signed_by` someone."""

    trusts: tuple[TrustConfig, ...] = ()
    library_signs: bool = False


def signature_checks(rules: Iterable[_Requiring], library: _Library | None) -> SignatureChecks:
    """What the policy made of `rules` and `library` verifies signatures against."""
    found: dict[str, TrustConfig] = {}
    for rule in rules:
        for requirement in rule.requirements:
            trust = getattr(requirement, "trust", None)
            if isinstance(trust, TrustConfig):
                found.setdefault(trust.version, trust)
    library_signs = library is not None and any(i.signed_by for i in library.images)
    return SignatureChecks(tuple(found.values()), library_signs)


def trust_configs(policy: SignaturePolicy) -> list[TrustConfig]:
    """The distinct trust configs the `signature` requirements of a policy verify against."""
    return list(policy.signatures.trusts)


async def signature_pushed(
    db: MetadataDB,
    store: BlobStore,
    policy: SignaturePolicy,
    repository: str,
    content: bytes,
    tag: str | None,
) -> bool:
    """After a manifest push: when it is a signature (`.sig` tag or signature referrer) and the
    policy trusts anyone, verify the signed image's signatures and record the proofs. Whether
    evidence arrived (the caller bumps the repository's evidence version)."""
    subject = signed_subject(content, tag)
    if subject is None:
        return False
    trusts = trust_configs(policy)
    for trust in trusts:
        await verify_and_record(db, store, trust, repository, subject)
    return bool(trusts)


def push_problem(policy: SignaturePolicy, content: bytes, tag: str | None) -> str | None:
    """Why a pushed signature manifest is refused before it is stored (over the verification
    limits), when the policy verifies signatures; None otherwise."""
    checks = policy.signatures
    if not checks.trusts and not checks.library_signs:
        return None
    return _limits_problem(content, tag)
