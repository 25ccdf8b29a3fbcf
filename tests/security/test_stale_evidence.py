"""Stale evidence: a proof dies with the signature that produced it, at once and across a
restart, and a scanner's report is never replaced by an older one (re-posted, re-signed or
replayed), nor dated in the future.

An attacker with push rights who once had a signature accepted (or a scanner's earlier, cleaner
report) tries to keep the image pullable after the evidence is withdrawn."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec

from policies.signatures.discovery import sources
from registry.context import CONTEXT
from registry.events.signing import sign as hmac_sign
from tests.oci import OCI_MANIFEST, error_codes, push_image
from tests.policies.test_signatures_bundles import keyed_bundle, statement
from tests.registry.test_signature_bundles import push_bundle_referrer
from tests.scans.conftest import HMAC_SECRET, SCANNERS, bearer
from tests.signing import (
    public_pem,
    pull,
    push_cosign_signature,
    sign,
    simple_signing_payload,
)

POLICY = """\
version: 1
trust:
  keys:
    release: {pem_file: release.pub}
rules:
  - name: prod is signed by release
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      signature: {any_of: [release]}
"""

UNSIGNED = 'rule "prod is signed by release": needs a signature by release; found no signature'


@pytest.fixture
def release_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def registry(start_client: Any, tmp_path: Path, release_key: Any) -> TestClient:
    """A registry enforcing POLICY (deletes are enabled by default)."""
    (tmp_path / "release.pub").write_bytes(public_pem(release_key))
    (tmp_path / "policy.yaml").write_text(POLICY)
    return await start_client(
        policy={"file": str(tmp_path / "policy.yaml"), "reload": False},
    )


async def signed_image(client: TestClient, key: Any, tag: str = "v1") -> tuple[str, str]:
    """Push prod/app:`tag` and its cosign `.sig` by `key`; (image digest, .sig digest)."""
    digest, _ = await push_image(client, "prod/app", tag)
    payload = simple_signing_payload("localhost:5000/prod/app", digest)
    sig = await push_cosign_signature(client, "prod/app", digest, payload, sign(key, payload))
    assert await pull(client, "prod/app", tag) == (200, "")
    return digest, sig


async def delete(client: TestClient, reference: str) -> None:
    resp = await client.delete(f"/v2/prod/app/manifests/{reference}")
    assert resp.status == 202, await resp.text()


def sig_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


async def test_deleting_the_sig_tag_quarantines_the_image_at_once(
    registry: TestClient, release_key: Any
) -> None:
    digest, _ = await signed_image(registry, release_key)
    await delete(registry, sig_tag(digest))
    assert await pull(registry, "prod/app", "v1") == (403, UNSIGNED)
    assert await pull(registry, "prod/app", digest) == (403, UNSIGNED)


async def test_deleting_the_sig_manifest_by_digest_quarantines_the_image(
    registry: TestClient, release_key: Any
) -> None:
    _, sig = await signed_image(registry, release_key)
    await delete(registry, sig)
    assert await pull(registry, "prod/app", "v1") == (403, UNSIGNED)


async def test_deleting_a_signature_referrer_quarantines_the_image(
    registry: TestClient, release_key: Any
) -> None:
    digest, _ = await push_image(registry, "prod/app", "v1")
    bundle, _ = keyed_bundle(release_key, statement(digest, name="registry.example/prod/app"))
    referrer = await push_bundle_referrer(registry, "prod/app", digest, json.dumps(bundle).encode())
    assert await pull(registry, "prod/app", "v1") == (200, "")
    await delete(registry, referrer)
    assert await pull(registry, "prod/app", "v1") == (403, UNSIGNED)


async def test_a_deleted_signature_stays_dead_after_a_restart(
    start_client: Any, registry: TestClient, release_key: Any, tmp_path: Path
) -> None:
    digest, _ = await signed_image(registry, release_key)
    await delete(registry, sig_tag(digest))
    await registry.close()
    restarted = await start_client(
        policy={"file": str(tmp_path / "policy.yaml"), "reload": False},
    )
    assert await pull(restarted, "prod/app", "v1") == (403, UNSIGNED)


async def test_a_sig_tag_moved_to_another_signature_is_verified_again(
    registry: TestClient, release_key: Any
) -> None:
    digest, _ = await signed_image(registry, release_key)
    # The `.sig` tag now names a signature by a key nobody trusts: the old proof is gone with it.
    other = ec.generate_private_key(ec.SECP256R1())
    payload = simple_signing_payload("localhost:5000/prod/app", digest)
    await push_cosign_signature(registry, "prod/app", digest, payload, sign(other, payload))
    status, message = await pull(registry, "prod/app", "v1")
    assert status == 403
    assert message.startswith(
        'rule "prod is signed by release": needs a signature by release; found 1 signature, '
        "by an unknown key (sha256:"
    )


async def test_the_fingerprint_of_where_signatures_live_follows_the_sig_tag(
    registry: TestClient, release_key: Any
) -> None:
    """Proofs are kept only while `sources` is unchanged. Between a `.sig` tag moving to
    another manifest and the pushed signature's verification (after the commit, off the event
    loop) a pull must not take the old manifest's proof for the new one's: the fingerprint
    names the manifest the tag points at, not only whether there is one."""
    db = registry.app[CONTEXT].db
    digest, first = await signed_image(registry, release_key)
    at_first = await sources(db, "prod/app", digest)
    other = ec.generate_private_key(ec.SECP256R1())
    payload = simple_signing_payload("localhost:5000/prod/app", digest)
    second = await push_cosign_signature(
        registry, "prod/app", digest, payload, sign(other, payload)
    )
    assert second != first
    at_second = await sources(db, "prod/app", digest)
    await delete(registry, sig_tag(digest))
    untagged = await sources(db, "prod/app", digest)
    assert len({at_first, at_second, untagged}) == 3


# -- scans ---------------------------------------------------------------------------------------

SCAN_POLICY = """\
version: 1
rules:
  - name: no criticals in prod
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      vulnerabilities: {max: {critical: 0}, require_scan: true, max_scan_age: 7d}
"""

CRITICAL = [
    {
        "id": "CVE-2026-1",
        "severity": "critical",
        "package": "openssl",
        "installed": "3.0",
        "fixed": "3.1",
    }
]
DENIED_CRITICAL = (
    'rule "no criticals in prod": 1 critical (CVE-2026-1) > 0 allowed; scanned by grype 0.80.0 '
    "on {day}"
)


@pytest.fixture
async def scanning(start_client: Any, tmp_path: Path) -> TestClient:
    (tmp_path / "policy.yaml").write_text(SCAN_POLICY)
    return await start_client(
        policy={"file": str(tmp_path / "policy.yaml"), "reload": False}, scanners=SCANNERS
    )


def report(findings: list[dict[str, Any]], scanned_at: float) -> bytes:
    return json.dumps(
        {
            "format": "trustyard.scan.v1",
            "scanner": {"name": "grype", "version": "0.80.0"},
            "scanned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(scanned_at)),
            "findings": findings,
        }
    ).encode()


async def post(
    client: TestClient, digest: str, body: bytes, headers: dict[str, str]
) -> tuple[int, str, str]:
    resp = await client.post(f"/api/v1/scans?digest={digest}", data=body, headers=headers)
    if resp.status == 201:
        return 201, "", ""
    answer = await resp.json()
    return resp.status, error_codes(answer)[0], answer["errors"][0]["message"]


async def scan_pull(client: TestClient) -> tuple[int, str]:
    resp = await client.get("/v2/prod/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    return resp.status, "" if resp.status == 200 else (await resp.json())["errors"][0]["message"]


def day(moment: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(moment))


def iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


async def test_an_older_report_never_replaces_a_newer_one(scanning: TestClient) -> None:
    digest, _ = await push_image(scanning, "prod/app", "v1")
    now = time.time()
    clean, dirty = report([], now - 3600), report(CRITICAL, now - 60)
    assert await post(scanning, digest, dirty, bearer()) == (201, "", "")
    status, message = await scan_pull(scanning)
    assert (status, message) == (403, DENIED_CRITICAL.format(day=day(now - 60)))
    # The scanner's older, clean report posted again (a late retry, or an attacker holding it).
    assert await post(scanning, digest, clean, bearer()) == (
        409,
        "SCAN_STALE",
        f"scanner trivy-ci already has a newer report on {digest} (scanned at "
        f"{iso(now - 60)}; this one was scanned at {iso(now - 3600)})",
    )
    assert await scan_pull(scanning) == (403, DENIED_CRITICAL.format(day=day(now - 60)))


async def test_an_older_report_signed_afresh_is_refused(scanning: TestClient) -> None:
    digest, _ = await push_image(scanning, "prod/app", "v1")
    now = time.time()
    clean, dirty = report([], now - 3600), report(CRITICAL, now - 60)
    assert await post(scanning, digest, dirty, hmac_sign(HMAC_SECRET, dirty)) == (201, "", "")
    status, code, message = await post(scanning, digest, clean, hmac_sign(HMAC_SECRET, clean))
    assert (status, code) == (409, "SCAN_STALE")
    assert message.startswith(f"scanner grype-nightly already has a newer report on {digest}")
    assert await scan_pull(scanning) == (403, DENIED_CRITICAL.format(day=day(now - 60)))


async def test_a_replayed_signed_body_is_refused(scanning: TestClient) -> None:
    digest, _ = await push_image(scanning, "prod/app", "v1")
    now = time.time()
    clean = report([], now - 3600)
    captured = hmac_sign(HMAC_SECRET, clean)  # what an eavesdropper keeps
    assert await post(scanning, digest, clean, captured) == (201, "", "")
    assert await scan_pull(scanning) == (200, "")
    dirty = report(CRITICAL, now - 60)
    assert await post(scanning, digest, dirty, hmac_sign(HMAC_SECRET, dirty)) == (201, "", "")
    assert await scan_pull(scanning) == (403, DENIED_CRITICAL.format(day=day(now - 60)))
    # The exact request again, inside the timestamp window.
    assert await post(scanning, digest, clean, captured) == (
        401,
        "UNAUTHORIZED",
        "scanner authentication failed: this signed request was already received (a replay)",
    )
    assert await scan_pull(scanning) == (403, DENIED_CRITICAL.format(day=day(now - 60)))


async def test_the_same_signed_request_is_a_replay_even_when_it_changes_nothing(
    start_client: Any, scanning: TestClient, tmp_path: Path
) -> None:
    digest, _ = await push_image(scanning, "prod/app", "v1")
    dirty = report(CRITICAL, time.time() - 60)
    captured = hmac_sign(HMAC_SECRET, dirty)
    assert await post(scanning, digest, dirty, captured) == (201, "", "")
    await scanning.close()
    # Remembered in the database: a restart does not reopen the window.
    restarted = await start_client(
        policy={"file": str(tmp_path / "policy.yaml"), "reload": False}, scanners=SCANNERS
    )
    status, code, _ = await post(restarted, digest, dirty, captured)
    assert (status, code) == (401, "UNAUTHORIZED")


async def test_a_replay_after_the_window_fails_the_timestamp(scanning: TestClient) -> None:
    digest, _ = await push_image(scanning, "prod/app", "v1")
    clean = report([], time.time() - 3600)
    old = hmac_sign(HMAC_SECRET, clean, now=time.time() - 301)
    assert await post(scanning, digest, clean, old) == (
        401,
        "UNAUTHORIZED",
        "scanner authentication failed: Trustyard-Timestamp is more than 300s from the "
        "server's clock (send Authorization: Bearer <token>, or sign the body)",
    )


async def test_a_report_dated_in_the_future_is_refused(scanning: TestClient) -> None:
    digest, _ = await push_image(scanning, "prod/app", "v1")
    now = time.time()
    # A clean report "from tomorrow" would otherwise outrank every real report for a day.
    future = report([], now + 86400)
    status, code, message = await post(scanning, digest, future, bearer())
    assert (status, code) == (400, "SCAN_INVALID")
    assert message.startswith(f"the report says it was scanned at {iso(now + 86400)}, more than ")
    assert "300s ahead of the server's clock" in message
    # Within the clock tolerance it is accepted.
    assert await post(scanning, digest, report([], now + 60), bearer()) == (201, "", "")


async def test_the_same_report_signed_again_is_accepted(scanning: TestClient) -> None:
    """A scanner retrying its own post (signed afresh) is not refused: a report as new as the
    stored one replaces it; only an older one is stale."""
    digest, _ = await push_image(scanning, "prod/app", "v1")
    dirty = report(CRITICAL, time.time() - 60)
    assert await post(scanning, digest, dirty, hmac_sign(HMAC_SECRET, dirty)) == (201, "", "")
    again = hmac_sign(HMAC_SECRET, dirty, now=time.time() + 1)
    assert await post(scanning, digest, dirty, again) == (201, "", "")
