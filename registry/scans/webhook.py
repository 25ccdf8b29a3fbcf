"""The scanner webhook and the scans API (Trustyard's own, under `/api/v1/`):

- `POST /api/v1/scans`: a scanner posts a Trivy, Grype or generic JSON report. It authenticates
  with its bearer token (`Authorization: Bearer <token>`) or an HMAC signature
  (`Trustyard-Timestamp`, `Trustyard-Signature`, see `registry.events.signing`; with several
  HMAC scanners `Trustyard-Scanner: <name>` says which), as configured under `scanners:`.
  Query parameters: `digest` (the scanned manifest, when the report does not name it or names
  another), `repository` (require the manifest in this repository), `format` (trivy | grype |
  generic, instead of recognising the body), `scanner_version` (when the report does not say).
  Answers 201 with the stored summary; 401 wrong credentials or a replayed signed request, 404
  unknown manifest, 400 a body we cannot read (saying where) or a `scanned_at` in the future
  (beyond the clock tolerance), 409 `SCAN_STALE` when the scanner already has a newer report on
  the manifest, 413 a body over `scans.max_body`. Nothing is stored unless all is well; a stored
  report replaces that scanner's earlier (never a newer) one and bumps the evidence version of
  every repository holding the manifest, so cached pull decisions are made afresh.

  What identifies a replay: an HMAC-signed post carries its timestamp, refused more than
  `signing.TOLERANCE` seconds from the clock; inside that window its signature is remembered
  (in the database, so also across a restart) and the same signed request is refused. A replay
  after the window fails the timestamp check; an older report re-signed or re-posted with a
  bearer token fails the `scanned_at` order.
- `GET /api/v1/scans/{digest}`: every scanner's latest report on a manifest, with findings.
"""

from __future__ import annotations

import dataclasses
import hmac
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web

from policies.rules import parse_size
from registry.bodies import BodyTooLarge, read_bounded
from registry.config import Config
from registry.context import context
from registry.errors import (
    SCAN_INVALID,
    SCAN_STALE,
    SCAN_TOO_LARGE,
    SCANNER_UNAUTHORIZED,
    RegistryError,
)
from registry.events import signing
from registry.path_parameters import path_parameter
from registry.scans.formats import parse_report
from registry.scans.report_fields import ReportError
from storage.metadata.scan_store import ScanStore
from storage.metadata.scans import Replay, ReplayedRequest, StaleReport
from storage.oci.digests import parse_digest
from storage.oci.errors import DIGEST_INVALID, MANIFEST_UNKNOWN, OciError

#: Trustyard's own error codes for the webhook (not the OCI spec's).
SCANNER_HEADER = "Trustyard-Scanner"
DEFAULT_MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Scanner:
    """A configured scanner and its credential: a bearer token or an HMAC secret."""

    name: str
    token: str | None = None
    hmac_secret: str | None = None


def scanners(config: Config) -> tuple[Scanner, ...]:
    """The scanners of the configuration (`scanners:`)."""
    return tuple(
        Scanner(entry["name"], entry.get("token"), entry.get("hmac_secret"))
        for entry in config.raw.get("scanners") or ()
    )


def max_body(config: Config) -> int:
    """The largest report accepted, in bytes (`scans.max_body`)."""
    section = config.raw.get("scans") or {}
    return parse_size(section.get("max_body", DEFAULT_MAX_BODY))


def _unauthorized(message: str) -> RegistryError:
    return RegistryError(
        SCANNER_UNAUTHORIZED,
        message=message,
        headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="trustyard-scanners"'},
    )


def _by_token(known: tuple[Scanner, ...], header: str) -> Scanner | None:
    # Header bytes that are not UTF-8 arrive as surrogates: compare them as the bytes sent.
    token = header[7:].strip().encode("utf-8", "surrogateescape")
    found = None
    for scanner in known:
        # Compare with every token (constant time each) so timing does not tell which matched.
        if scanner.token and hmac.compare_digest(scanner.token.encode(), token):
            found = scanner
    return found


def _by_signature(
    known: tuple[Scanner, ...], request: web.Request, body: bytes
) -> tuple[Scanner | None, str]:
    named = request.headers.get(SCANNER_HEADER)
    candidates = [s for s in known if s.hmac_secret and (named is None or s.name == named)]
    if not candidates:
        return None, (
            f"no HMAC scanner named {named!r}" if named else "no scanner uses an HMAC secret"
        )
    problem = "the signature does not match the body"
    for scanner in candidates:
        assert scanner.hmac_secret is not None
        problem = signing.verify(scanner.hmac_secret, request.headers, body) or ""
        if not problem:
            return scanner, ""
    return None, problem


async def _read_limited(request: web.Request, limit: int) -> bytes:
    try:
        return await read_bounded(request.content, limit)
    except BodyTooLarge:
        raise _too_large(limit) from None


def _too_large(limit: int) -> RegistryError:
    return RegistryError(
        SCAN_TOO_LARGE,
        {"limit": limit},
        message=f"scan report larger than the {limit} byte limit (scans.max_body)",
    )


async def post_scan(request: web.Request) -> web.StreamResponse:
    """Authenticate the scanner, parse its report, and store it against the manifest."""
    ctx = context(request)
    known = scanners(ctx.config)
    if not known:
        raise _unauthorized("no scanners are configured (scanners: in the configuration)")
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scanner = None
    if header[:7].lower() == "bearer ":
        scanner = _by_token(known, header)
        if scanner is None:
            raise _unauthorized("the bearer token is not a configured scanner's")
    limit = max_body(ctx.config)
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    body = await _read_limited(request, limit)
    replay = signed_at = None
    if scanner is None:
        scanner, problem = _by_signature(known, request, body)
        if scanner is None:
            raise _unauthorized(
                f"scanner authentication failed: {problem} "
                "(send Authorization: Bearer <token>, or sign the body)"
            )
        signed_at = float(request.headers[signing.TIMESTAMP_HEADER])
        replay = Replay(
            request.headers[signing.SIGNATURE_HEADER], signed_at + signing.TOLERANCE + 1
        )
    try:
        report = parse_report(body, request.query.get("format"))
    except ReportError as exc:
        raise RegistryError(SCAN_INVALID, message=str(exc)) from None
    now = time.time()
    if report.scanned_at is not None and report.scanned_at > now + signing.TOLERANCE:
        raise RegistryError(
            SCAN_INVALID,
            {"scanned_at": report.scanned_at},
            message=(
                f"the report says it was scanned at {_iso(report.scanned_at)}, more than "
                f"{int(signing.TOLERANCE)}s ahead of the server's clock ({_iso(now)})"
            ),
        )
    digest = _digest(request.query.get("digest"), report.digests)
    store = ScanStore(ctx.db)
    repositories = await store.repositories_of(digest)
    wanted = request.query.get("repository")
    if wanted is not None:
        repositories = [r for r in repositories if r == wanted]
    if not repositories:
        where = f" in repository {wanted}" if wanted else ""
        raise RegistryError(
            MANIFEST_UNKNOWN,
            {"digest": digest},
            message=f"no manifest {digest}{where}: push the image before posting its scan",
        )
    if not report.tool_version and request.query.get("scanner_version"):
        report = dataclasses.replace(report, tool_version=request.query["scanner_version"])
    try:
        stored = await store.replace(
            digest, scanner.name, report, now, signed_at=signed_at, replay=replay
        )
    except StaleReport as exc:
        raise RegistryError(SCAN_STALE, {"digest": digest}, message=str(exc)) from None
    except ReplayedRequest as exc:
        raise _unauthorized(f"scanner authentication failed: {exc}") from None
    for repository in repositories:
        await ctx.policy.evidence_arrived(repository)
    return web.json_response(
        {**stored.as_json(findings=False), "repositories": repositories}, status=201
    )


def _digest(given: str | None, named: tuple[str, ...]) -> str:
    if given is not None:
        try:
            return str(parse_digest(given))
        except OciError:
            raise RegistryError(
                DIGEST_INVALID, {"digest": given}, message=f"digest={given!r} is not a digest"
            ) from None
    if not named:
        raise RegistryError(
            SCAN_INVALID,
            message="the report names no image digest; add ?digest=sha256:... to the URL",
        )
    return named[0]


async def get_scans(request: web.Request) -> web.StreamResponse:
    """Every scanner's latest report on the manifest `{digest}`, with findings."""
    digest = _digest(path_parameter(request, "digest"), ())
    store = ScanStore(context(request).db)
    repositories = await store.repositories_of(digest)
    reports = await store.reports([digest])
    if not repositories and not reports:
        raise RegistryError(MANIFEST_UNKNOWN, {"digest": digest}, message=f"no manifest {digest}")
    body: dict[str, Any] = {
        "digest": digest,
        "repositories": repositories,
        "reports": [r.as_json() for r in reports],
    }
    return web.json_response(body)


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
