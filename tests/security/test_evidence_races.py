"""Evidence that changes while the gate reads the repository's evidence version is not
forgotten: the version read before the change is used by the request that read it, never kept
for the requests after it.

The attacker withdraws nothing here: the owner deletes a signature (revoking the image) while
pulls are in flight. A pull that began before the delete may still be answered from before it;
every pull that begins after it must be decided afresh, not served the allow cached under the
version read before the delete."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec

from registry.context import CONTEXT
from tests.oci import push_image
from tests.security.test_stale_evidence import POLICY, UNSIGNED, delete, sig_tag, signed_image
from tests.signing import public_pem, pull


@pytest.fixture
def release_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def registry(start_client: Any, tmp_path: Path, release_key: Any) -> TestClient:
    """A registry whose prod/** pulls need a signature by `release_key`."""
    (tmp_path / "release.pub").write_bytes(public_pem(release_key))
    (tmp_path / "policy.yaml").write_text(POLICY)
    return await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})


def hold_first_version_read(db: Any, monkeypatch: Any) -> tuple[asyncio.Event, asyncio.Event]:
    """The first evidence version read from now on returns what the database held, but only
    after the test lets it (sets the second event; the first says the read is held), as a slow
    database read under load would."""
    read = db.evidence_version
    reading, go_on = asyncio.Event(), asyncio.Event()

    async def slow_first_read(repository: str) -> int:
        version = await read(repository)
        if not reading.is_set():
            reading.set()
            await go_on.wait()
        return version

    monkeypatch.setattr(db, "evidence_version", slow_first_read)
    return reading, go_on


async def test_a_signature_deleted_while_a_pull_reads_the_evidence_version_is_not_forgotten(
    registry: TestClient, release_key: Any, monkeypatch: Any
) -> None:
    digest, _ = await signed_image(registry, release_key)
    # A change (another tag pushed) makes the gate read the evidence version again.
    await push_image(registry, "prod/app", "v2")
    reading, go_on = hold_first_version_read(registry.app[CONTEXT].db, monkeypatch)
    early = asyncio.create_task(pull(registry, "prod/app", "v1"))
    await asyncio.wait_for(reading.wait(), 20)
    # Meanwhile another pull reads the same version and caches its allow under it ...
    assert await pull(registry, "prod/app", "v1") == (200, "")
    # ... and the signature is deleted: the version in the database moves on.
    await delete(registry, sig_tag(digest))
    go_on.set()
    assert await early in ((200, ""), (403, UNSIGNED))  # began before the delete: either

    assert await pull(registry, "prod/app", "v1") == (403, UNSIGNED)
    assert await pull(registry, "prod/app", digest) == (403, UNSIGNED)


async def test_a_signature_deleted_by_another_worker_while_a_pull_reads_the_version_is_not_kept(
    start_client: Any, tmp_path: Path, release_key: Any, monkeypatch: Any
) -> None:
    """Two workers over one data directory: worker B deletes the signature while worker A reads
    the evidence version. A's watch of the shared generation forgets what A remembered; the
    version A was reading when that happened is stale and must not be remembered either (or
    every later pull on A is served the allow cached under it)."""
    (tmp_path / "release.pub").write_bytes(public_pem(release_key))
    (tmp_path / "policy.yaml").write_text(POLICY)
    settings = {"file": str(tmp_path / "policy.yaml"), "reload": False}
    one = await start_client(policy=settings)
    other = await start_client(policy=settings)
    digest, _ = await signed_image(one, release_key)
    db = one.app[CONTEXT].db
    generation = db.generation
    seen: list[int] = []
    watched = asyncio.Condition()

    async def observed_generation(name: str) -> int:
        """What worker A's watch reads; the watch acts on it in the same step."""
        value = await generation(name)
        async with watched:
            seen.append(value)
            watched.notify_all()
        return value

    async def watch_sees(target: int) -> None:
        async with watched:
            await asyncio.wait_for(watched.wait_for(lambda: bool(seen) and seen[-1] >= target), 20)

    monkeypatch.setattr(db, "generation", observed_generation)
    # A change on A makes it read the version again; let its watch settle on that change first.
    await push_image(one, "prod/app", "v2")
    await watch_sees(await generation("evidence"))

    reading, go_on = hold_first_version_read(db, monkeypatch)
    early = asyncio.create_task(pull(one, "prod/app", "v1"))
    await asyncio.wait_for(reading.wait(), 20)
    # Another pull on A reads the same version, remembers it and caches its allow under it ...
    assert await pull(one, "prod/app", "v1") == (200, "")
    # ... worker B deletes the signature, and A's watch sees the shared generation move.
    await delete(other, sig_tag(digest))
    await watch_sees(await generation("evidence"))
    go_on.set()
    assert await early in ((200, ""), (403, UNSIGNED))  # began before the delete: either

    assert await pull(one, "prod/app", "v1") == (403, UNSIGNED)
    assert await pull(one, "prod/app", digest) == (403, UNSIGNED)
    assert await pull(other, "prod/app", "v1") == (403, UNSIGNED)
