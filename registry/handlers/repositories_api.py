"""Trustyard's API about stored content (not part of the OCI spec), under `/api/v1/`:

- `GET /api/v1/repositories`: repositories in lexical order with their tag and manifest counts;
  `prefix` filters, `n` (default 100, at most 1000) and `last` page.
- `GET /api/v1/repositories/{repository}/tags`: a repository's tags with the digest, media type,
  size and time of each; `n` and `last` page.
- `GET /api/v1/repositories/{repository}/manifests/{reference}`: one manifest (tag or digest)
  with everything known about it: platforms, layers and size, signatures and attestations
  (verified or not, and why), scan reports with findings and the policy's exceptions, referrers,
  and the library base it was built on.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from policies.signatures.proofs import findings_for, trust_configs
from registry.context import context
from registry.errors import RegistryError
from registry.handlers.manifests import find_manifest
from registry.handlers.query_params import bad_query, page_size, text
from registry.path_parameters import path_parameter
from storage.metadata.scan_store import ScanStore
from storage.oci.errors import NAME_UNKNOWN
from storage.oci.grammar import check_name

DEFAULT_PAGE = 100
#: Config media types of container images (anything else makes a manifest an artifact).
IMAGE_CONFIGS = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)
MAX_PAGE = 1000
#: Platform manifests of an index looked at, at most (the policy reads as many).
MAX_CHILDREN = 128
#: Findings shown per scan report, at most (the summary counts them all).
MAX_FINDINGS = 500


def _iso(moment: float | None) -> str | None:
    return None if moment is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _next(path: str, query: dict[str, str], n: int, last: str) -> str:
    return f"{path}?{urlencode({**query, 'n': n, 'last': last})}"


async def list_repositories(request: web.Request) -> web.StreamResponse:
    """`GET /api/v1/repositories`."""
    ctx = context(request)
    limit = page_size(request.query, DEFAULT_PAGE, MAX_PAGE)
    prefix = text(request.query, "prefix", 255)
    last = text(request.query, "last", 255)
    rows = await ctx.db.repository_summaries(limit=limit + 1, after=last, prefix=prefix)
    body: dict[str, Any] = {
        "repositories": [
            {
                "name": r.name,
                "tags": r.tags,
                "manifests": r.manifests,
                "updated_at": _iso(r.updated_at),
            }
            for r in rows[:limit]
        ]
    }
    if len(rows) > limit:
        query = {"prefix": prefix} if prefix else {}
        body["next"] = _next("/api/v1/repositories", query, limit, rows[limit - 1].name)
    return web.json_response(body)


async def list_tags(request: web.Request) -> web.StreamResponse:
    """`GET /api/v1/repositories/{repository}/tags`."""
    ctx = context(request)
    name = check_name(path_parameter(request, "repository"))
    if not await ctx.db.repository_exists(name):
        raise RegistryError(NAME_UNKNOWN, {"name": name})
    limit = page_size(request.query, DEFAULT_PAGE, MAX_PAGE)
    last = text(request.query, "last", 128)
    rows = await ctx.db.tag_rows(name, limit=limit + 1, after=last)
    body: dict[str, Any] = {
        "repository": name,
        "tags": [
            {
                "name": r.name,
                "digest": r.digest,
                "media_type": r.media_type,
                "size": r.size,
                "updated_at": _iso(r.updated_at),
            }
            for r in rows[:limit]
        ],
    }
    if len(rows) > limit:
        body["next"] = _next(f"/api/v1/repositories/{name}/tags", {}, limit, rows[limit - 1].name)
    return web.json_response(body)


def _platform(entry: dict[str, Any]) -> str:
    platform = entry.get("platform")
    if not isinstance(platform, dict):
        return ""
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if isinstance(p, str) and p)


def _descriptors(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The config and layer descriptors of an image manifest (well-formed ones only)."""
    found = []
    config = document.get("config")
    for index, entry in enumerate([config, *(document.get("layers") or [])]):
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
            size = entry.get("size")
            found.append(
                {
                    "role": "config" if index == 0 else "layer",
                    "digest": entry["digest"],
                    "media_type": str(entry.get("mediaType", "")),
                    "size": size if isinstance(size, int) and size >= 0 else 0,
                }
            )
    return found


def _parse(content: bytes) -> dict[str, Any]:
    try:
        document = json.loads(content)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


async def _platforms(ctx: Any, repository: str, document: dict[str, Any]) -> list[dict[str, Any]]:
    entries = [e for e in document.get("manifests") or [] if isinstance(e, dict)]
    platforms = []
    for entry in entries[:MAX_CHILDREN]:
        digest = entry.get("digest")
        if not isinstance(digest, str):
            continue
        child = await ctx.db.get_manifest(repository, digest)
        layers = _descriptors(_parse(child.content)) if child is not None else []
        platforms.append(
            {
                "platform": _platform(entry),
                "digest": digest,
                "media_type": str(entry.get("mediaType", "")),
                "stored": child is not None,
                "size": (child.size if child else 0) + sum(d["size"] for d in layers),
                "layers": sum(1 for d in layers if d["role"] == "layer"),
            }
        )
    return platforms


async def _signatures(ctx: Any, repository: str, digest: str) -> list[dict[str, Any]]:
    # Verify under the current trust configs first (as a pull would), so what is shown is what
    # the policy decides with; then show every recorded proof, marking stale trust versions.
    versions = set()
    for trust in trust_configs(ctx.policy.policy):
        versions.add(trust.version)
        await findings_for(ctx.db, ctx.store, trust, repository, digest)
    shown = []
    proofs = sorted(
        await ctx.db.signature_proofs(repository, digest),
        key=lambda proof: (proof.verified_at, proof.signature_digest),
    )
    for sig, signer, valid, detail, trust_version, verified_at in proofs:
        if not sig:
            continue  # "looked, found no signature" marker
        shown.append(
            {
                "signature_digest": sig,
                "kind": str(detail.get("kind", "")),
                "signer": signer,
                "verified": valid,
                "reason": str(detail.get("reason", "")),
                "docker_reference": detail.get("docker_reference"),
                "predicate_type": detail.get("predicate_type"),
                "current_trust": trust_version in versions,
                "verified_at": _iso(verified_at),
            }
        )
    return shown


def _exceptions(policy: Any) -> dict[str, dict[str, str]]:
    """Vulnerability exceptions written in the policy, by vulnerability id."""
    found: dict[str, dict[str, str]] = {}
    for rule in getattr(policy, "rules", ()):
        for requirement in rule.requirements:
            for exc in getattr(requirement, "exceptions", ()) or ():
                found.setdefault(
                    exc.id,
                    {"rule": rule.name, "until": exc.until.isoformat(), "reason": exc.reason},
                )
    return found


async def _scans(ctx: Any, digests: list[str]) -> list[dict[str, Any]]:
    exceptions = _exceptions(ctx.policy.policy)
    reports = []
    for report in await ScanStore(ctx.db).reports(digests):
        shown = report.as_json(findings=False)
        findings = [f.as_json() for f in report.findings[:MAX_FINDINGS]]
        for finding in findings:
            finding["exception"] = exceptions.get(finding["id"])
        shown["findings"] = findings
        shown["findings_truncated"] = len(report.findings) > MAX_FINDINGS
        reports.append(shown)
    return reports


async def manifest_details(request: web.Request) -> web.StreamResponse:
    """`GET /api/v1/repositories/{repository}/manifests/{reference}`."""
    ctx = context(request)
    name = check_name(path_parameter(request, "repository"))
    reference = path_parameter(request, "reference")
    if len(reference) > 200:
        raise bad_query("reference", reference, "expected a tag or a digest")
    record = await find_manifest(ctx.db, name, reference)
    document = _parse(record.content)
    layers = _descriptors(document)
    if "manifests" in document:
        kind = "index"
    elif record.subject or (record.artifact_type or IMAGE_CONFIGS[0]) not in IMAGE_CONFIGS:
        kind = "artifact"
    else:
        kind = "image"
    platforms = await _platforms(ctx, name, document) if kind == "index" else []
    stored_sizes = await ctx.db.blob_sizes([d["digest"] for d in layers])
    for layer in layers:
        layer["stored"] = layer["digest"] in stored_sizes
    size = record.size + (
        sum(p["size"] for p in platforms) if platforms else sum(d["size"] for d in layers)
    )
    signatures = await _signatures(ctx, name, record.digest)
    referrers = await ctx.db.referrers(name, record.digest)
    lineage = await ctx.db.lineage_of(name, record.digest)
    scanned = [record.digest, *(p["digest"] for p in platforms)]
    return web.json_response(
        {
            "repository": name,
            "reference": reference,
            "digest": record.digest,
            "media_type": record.media_type,
            "artifact_type": record.artifact_type,
            "kind": kind,
            "subject": record.subject,
            "annotations": record.annotations or {},
            "created_at": _iso(record.created_at),
            "manifest_size": record.size,
            "size": size,
            "tags": await ctx.db.tags_of(name, record.digest),
            "platforms": platforms,
            "layers": layers,
            "signatures": [s for s in signatures if not s["predicate_type"]],
            "attestations": [s for s in signatures if s["predicate_type"]],
            "scans": await _scans(ctx, scanned),
            "referrers": [
                {
                    "digest": r.digest,
                    "media_type": r.media_type,
                    "artifact_type": r.artifact_type,
                    "size": r.size,
                    "annotations": r.annotations or {},
                }
                for r in referrers
            ],
            "lineage": [
                {
                    "platform": platform,
                    "library": f"{lib}:{tag}",
                    "base_digest": base,
                    "current": current,
                    "shared_layers": shared,
                    "recorded_at": _iso(recorded),
                }
                for platform, lib, tag, base, current, shared, recorded in lineage
            ],
        }
    )
