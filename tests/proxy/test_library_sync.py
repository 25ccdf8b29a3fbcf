"""`trustyard library sync`: declared library tags follow their `source:` upstream (the
reference registry, TLS from a private CA, htpasswd): a new upstream digest moves the library
tag and its history; an unchanged one does not."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from policies.library.signing import pending_tags
from policies.loader import load_policy
from registry.cli import main
from registry.context import CONTEXT
from storage.layout import DataLayout
from storage.metadata import open_metadata
from tests.conftest import registry_metadata_url
from tests.proxy.upstreams import proxy_config, push_signature, random_layer
from tests.server_process import port_of, reserve_port
from tests.signing import public_pem, sign, simple_signing_payload

POLICY = """\
version: 1
library:
  namespace: library
  images:
    - name: python
      tags: ["3.12"]
      source: mirror.test/library/python
    - name: local-only
      tags: ["1"]
rules: []
"""


async def _history(data: Path) -> list[tuple[str, float | None]]:
    db = await open_metadata(DataLayout(data).database, registry_metadata_url())
    try:
        rows = await db.read(
            "SELECT digest, until FROM library_tag_history WHERE name = 'python' ORDER BY since"
        )
    finally:
        await db.close()
    return [(row[0], row[1]) for row in rows]


async def _create_database(data: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)  # the data directory (on PostgreSQL, no database)
    db = await open_metadata(DataLayout(data).database, registry_metadata_url())
    await db.close()


def _sync_command(tmp_path: Path, upstream_registry, policy: str) -> tuple[Path, list[str]]:
    """A data directory with its database, `policy` and a configuration proxying the upstream
    as `mirror.test`; (data directory, `trustyard library sync` arguments)."""
    data = tmp_path / "data"
    asyncio.run(_create_database(data))
    (tmp_path / "policy.yaml").write_text(policy)
    config = {"data_dir": str(data), **proxy_config(upstream_registry.url, upstream_registry.ca)}
    (tmp_path / "trustyard.yaml").write_text(json.dumps(config))
    argv = ["library", "sync", "--config", str(tmp_path / "trustyard.yaml")]
    return data, [*argv, "--policy", str(tmp_path / "policy.yaml")]


def test_sync_follows_the_upstream_tag(
    tmp_path: Path, upstream_registry, upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = asyncio.run(upstream.push_image("library/python", "3.12", [random_layer(50_000)]))
    data, argv = _sync_command(tmp_path, upstream_registry, POLICY)

    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"python:3.12 from mirror.test/library/python: moved to {first}" in out
    assert main(argv) == 0
    assert f"unchanged ({first})" in capsys.readouterr().out

    # Upstream patches the base: the library tag follows, its history records both.
    second, _ = asyncio.run(upstream.push_image("library/python", "3.12", [random_layer(50_000)]))
    assert main([*argv, "python:3.12"]) == 0
    assert f"moved to {second}" in capsys.readouterr().out
    history = asyncio.run(_history(data))
    assert [digest for digest, _ in history] == [first, second]
    assert history[0][1] is not None and history[1][1] is None

    # Names that cannot be synced are refused with the reason.
    assert main([*argv, "local-only"]) == 2
    assert "not a declared library image or tag with a source:" in capsys.readouterr().err
    assert main([*argv, "python:3.99"]) == 2


async def test_the_server_syncs_every_interval_and_announces_moves(
    start_client, tmp_path: Path, upstream_registry, upstream
) -> None:
    first, _ = await upstream.push_image("library/python", "3.12", [random_layer(20_000)])
    (tmp_path / "policy.yaml").write_text(
        POLICY.replace("  namespace: library\n", "  namespace: library\n  sync_interval: 0.2s\n")
    )
    sock = reserve_port()  # the event endpoint is down: announcements stay in the outbox
    try:
        client = await start_client(
            policy={"file": str(tmp_path / "policy.yaml"), "reload": False},
            events={
                "endpoints": [{"name": "ci", "url": f"http://127.0.0.1:{port_of(sock)}/"}],
                "retry": {"initial": "1h", "max": "1h"},
            },
            **proxy_config(upstream_registry.url, upstream_registry.ca),
        )
        db = client.app[CONTEXT].db

        async def history() -> list[str]:
            rows = await db.read(
                "SELECT digest FROM library_tag_history WHERE name = 'python' ORDER BY since"
            )
            return [row[0] for row in rows]

        await until(lambda: history(), [first])
        second, _ = await upstream.push_image("library/python", "3.12", [random_layer(20_000)])
        await until(lambda: history(), [first, second])
        rows = await db.read(
            "SELECT body FROM event_outbox WHERE type = 'dev.trustyard.library.tag.updated'"
        )
        moves = [json.loads(row[0])["data"] for row in rows]
        assert [(m["digest"], m.get("previous")) for m in moves][-1] == (second, first)
        assert moves[-1]["actor"] == "library-sync"
    finally:
        sock.close()


async def until(read, expected, timeout: float = 60.0) -> None:
    """Wait until `await read()` returns `expected` (the sync runs in the background)."""
    deadline = time.monotonic() + timeout
    while (found := await read()) != expected:
        assert time.monotonic() < deadline, f"still {found}, expected {expected}"
        await asyncio.sleep(0.05)


SIGNED_POLICY = """\
version: 1
trust:
  keys:
    release: {pem_file: release.pub}
library:
  namespace: library
  images:
    - name: python
      tags: ["3.12"]
      source: mirror.test/vendor/python
      signed_by: [release]
rules: []
"""


async def _library_state(data: Path, policy: Path) -> tuple[list[str], list[str], list[str]]:
    """(library history digests, reasons of pending tags, tags of the library repository)."""
    library = load_policy(policy).library
    db = await open_metadata(DataLayout(data).database, registry_metadata_url())
    try:
        rows = await db.read(
            "SELECT digest FROM library_tag_history WHERE name = 'python' ORDER BY since"
        )
        pending = [p.reason for p in await pending_tags(db, library)]
        tags = await db.list_tags("library/python", 100, None)
    finally:
        await db.close()
    return [row[0] for row in rows], pending, tags


def test_sync_brings_upstream_signatures_and_signed_by_counts_them(
    tmp_path: Path, upstream_registry, upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "release.pub").write_bytes(public_pem(key))
    digest, _ = asyncio.run(upstream.push_image("vendor/python", "3.12", [random_layer(20_000)]))
    data, argv = _sync_command(tmp_path, upstream_registry, SIGNED_POLICY)
    where = "python:3.12 from mirror.test/vendor/python"
    host = upstream_registry.url.split("://", 1)[1]
    sig_tag = digest.replace(":", "-") + ".sig"

    def sign_upstream(reference: str) -> None:
        payload = simple_signing_payload(reference, digest)
        asyncio.run(push_signature(upstream, "vendor/python", digest, payload, sign(key, payload)))

    # Unsigned upstream: fetched, but the library does not move; the reason is shown and kept.
    assert main(argv) == 0, capsys.readouterr().err
    unsigned = "not signed by release (found no signature)"
    assert f"{where}: {digest} is not signed yet: {unsigned}" in capsys.readouterr().out
    assert asyncio.run(_library_state(data, tmp_path / "policy.yaml"))[:2] == ([], [unsigned])

    # Signed upstream by the right key, for the same path on another registry: brought along,
    # and not counted (only the declared source on its upstream's host names this image).
    sign_upstream("evil.example/vendor/python")
    assert main(argv) == 0
    elsewhere = "not signed by release (by release but for repository vendor/python)"
    assert f"is not signed yet: {elsewhere}" in capsys.readouterr().out
    history, pending, tags = asyncio.run(_library_state(data, tmp_path / "policy.yaml"))
    assert (history, pending) == ([], [elsewhere])
    assert sig_tag in tags

    # Signed upstream for its source: the sync brings the signature and the library follows.
    sign_upstream(f"{host}/vendor/python")
    assert main(argv) == 0
    assert f"{where}: moved to {digest}" in capsys.readouterr().out
    history, pending, tags = asyncio.run(_library_state(data, tmp_path / "policy.yaml"))
    assert (history, pending) == ([digest], [])
    assert sig_tag in tags and "3.12" in tags


def test_sync_refuses_a_blob_longer_than_its_manifest_declares(
    tmp_path: Path, upstream_registry, upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    """An upstream may not send more bytes than the manifest declares (they go to disk): the
    sync stops reading, refuses with the reason, and the library tag does not move."""
    layer = random_layer(300_000)

    async def push_understated() -> str:
        _, body = await upstream.push_image("library/python", "base", [layer])
        document = json.loads(body)
        document["layers"][0]["size"] = 1_000  # the blob behind it is 300 000 bytes
        async with aiohttp.ClientSession() as session:
            return await upstream.put_manifest(
                session, "library/python", "3.12", json.dumps(document).encode()
            )

    asyncio.run(push_understated())
    data, argv = _sync_command(tmp_path, upstream_registry, POLICY)
    argv.append("python:3.12")

    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "more than the 1000 bytes declared" in err, err
    assert "Traceback" not in err
    assert asyncio.run(_history(data)) == []
