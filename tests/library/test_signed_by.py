"""`signed_by`: a library tag follows a pushed or imported digest only once that digest is
signed by a named trusted signer (a cosign `.sig` made here as cosign writes it); until then the
report shows it pending and `base_image` refuses images built on it, saying why."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from policies.library.history import tag_history
from policies.library.importer import import_image
from policies.loader import PolicyError, parse_policy
from registry.context import CONTEXT
from tests.events.receiver import Receiver, serve, until_drained
from tests.library.images import Image, layer_tar, push, write_oci_layout
from tests.policies.test_signatures_bundles import keyed_bundle, statement
from tests.registry.test_signature_bundles import push_bundle_referrer
from tests.signing import push_cosign_signature, sign, simple_signing_payload, start_trusting

POLICY = """\
version: 1
trust:
  keys:
    ops: {pem_file: ops.pub}
library:
  images:
    - name: python
      tags: ["3.12-slim"]
      signed_by: [ops]
rules:
  - name: apps build on the library
    match: {repositories: ["apps/**"], on: [push]}
    require:
      base_image: {from_library: true}
"""

PY_LAYERS = [layer_tar(f"python-{i}") for i in range(3)]
PYTHON = Image(PY_LAYERS)
PATCHED = Image([*PY_LAYERS[:2], layer_tar("python-2-patched")])


@pytest.fixture
def ops_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def signed_library(start_client: Any, tmp_path: Path, ops_key: Any) -> TestClient:
    return await start_trusting(start_client, tmp_path, POLICY, {"ops": ops_key})


async def sign_library(client: TestClient, key: Any, digest: str) -> None:
    payload = simple_signing_payload("localhost:5000/library/python", digest)
    await push_cosign_signature(client, "library/python", digest, payload, sign(key, payload))


async def slim(client: TestClient) -> dict[str, Any]:
    body = await (await client.get("/api/v1/library")).json()
    [python] = body["images"]
    assert python["signed_by"] == ["ops"]
    [tag] = python["tags"]
    return dict(tag)


async def current(client: TestClient) -> list[str]:
    history = await tag_history(client.server.app[CONTEXT].db, "python", "3.12-slim")
    return [h.digest for h in history if h.current]


async def test_a_library_digest_counts_once_signed_by_a_named_signer(
    signed_library: TestClient, ops_key: Any
) -> None:
    client = signed_library
    assert (await push(client, "library/python", "3.12-slim", PYTHON)).status == 201
    # Pushed, not signed: the registry tag moved, the library did not.
    assert await current(client) == []
    tag = await slim(client)
    assert tag["digest"] is None
    assert tag["pending"] == {
        "digest": PYTHON.digest,
        "reason": "not signed by ops (found no signature)",
    }
    app = Image([*PY_LAYERS, layer_tar("app")])
    resp = await push(client, "apps/web", "v1", app)
    assert resp.status == 403
    assert (await resp.json())["errors"][0]["message"] == (
        f'rule "apps build on the library": image is built on python:3.12-slim@'
        f"{PYTHON.digest[:19]}…, which is not signed by ops (signed_by), so not a library image "
        "yet; sign it or rebuild on the library's current python:3.12-slim"
    )
    # Signed by someone else: still pending, and the report says what was found.
    await sign_library(client, ec.generate_private_key(ec.SECP256R1()), PYTHON.digest)
    assert await current(client) == []
    assert "by an unknown key (sha256:" in (await slim(client))["pending"]["reason"]
    # Signed by ops: the library tag follows, the app is accepted and recorded.
    await sign_library(client, ops_key, PYTHON.digest)
    assert await current(client) == [PYTHON.digest]
    assert (await slim(client))["pending"] is None
    assert (await push(client, "apps/web", "v1", app)).status == 201

    # A patch pushed unsigned does not make the app stale (nor is it a base yet) ...
    assert (await push(client, "library/python", "3.12-slim", PATCHED)).status == 201
    assert await current(client) == [PYTHON.digest]
    tag = await slim(client)
    assert (tag["digest"], tag["pending"]["digest"], tag["stale_consumers"]) == (
        PYTHON.digest,
        PATCHED.digest,
        0,
    )
    # ... until it is signed.
    await sign_library(client, ops_key, PATCHED.digest)
    assert await current(client) == [PATCHED.digest]
    tag = await slim(client)
    assert (tag["pending"], tag["consumers"], tag["stale_consumers"]) == (None, 1, 1)


async def test_an_import_waits_for_its_signature_too(
    signed_library: TestClient, ops_key: Any, tmp_path: Path
) -> None:
    client = signed_library
    ctx = client.server.app[CONTEXT]
    write_oci_layout(tmp_path / "layout", [PYTHON])
    result = await import_image(
        ctx.db, ctx.store, ctx.policy.policy.library, tmp_path / "layout", "python:3.12-slim"
    )
    assert result.pending == "not signed by ops (found no signature)"
    assert not result.moved
    assert await current(client) == []
    await sign_library(client, ops_key, PYTHON.digest)
    assert await current(client) == [PYTHON.digest]


async def test_a_sigstore_bundle_referrer_signs_a_library_digest_too(
    signed_library: TestClient, ops_key: Any
) -> None:
    """cosign 3 signs with a bundle pushed as a referrer (no `.sig` tag): the library tag
    follows once ops's bundle is pushed, not on a stranger's."""
    client = signed_library
    assert (await push(client, "library/python", "3.12-slim", PYTHON)).status == 201
    for key in (ec.generate_private_key(ec.SECP256R1()), ops_key):
        bundle, _ = keyed_bundle(key, statement(PYTHON.digest, name="library/python"))
        await push_bundle_referrer(
            client, "library/python", PYTHON.digest, json.dumps(bundle).encode()
        )
        if key is not ops_key:
            assert await current(client) == []
            assert "by an unknown key (sha256:" in (await slim(client))["pending"]["reason"]
    assert await current(client) == [PYTHON.digest]
    assert (await slim(client))["pending"] is None


def test_signed_by_names_a_trusted_signer() -> None:
    text = POLICY.replace("signed_by: [ops]", "signed_by: [docker-official]").replace(
        "    ops: {pem_file: ops.pub}\n", ""
    )
    text = text.replace("trust:\n  keys:\n", "")
    with pytest.raises(PolicyError) as raised:
        parse_policy(text)
    assert (
        "library.images[0].signed_by[0]: unknown signer docker-official; trust: declares none"
        in (str(raised.value))
    )


async def test_library_tag_updated_is_sent_when_the_signature_moves_the_tag(
    start_client: Any, tmp_path: Path, ops_key: Any
) -> None:
    """With `signed_by`, `library.tag.updated` goes out when the library tag moves: at the
    signature's push, not at the unsigned image's."""
    (tmp_path / "ops.pub").write_bytes(
        ops_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "policy.yaml").write_text(POLICY)
    hook = Receiver(secret="library-secret-0123456789")
    runner, port = await serve(hook)
    try:
        endpoint = {
            "name": "rebuilds",
            "url": f"http://127.0.0.1:{port}/hook",
            "events": ["library.tag.updated"],
            "secret": hook.secret,
        }
        client = await start_client(
            policy={"file": str(tmp_path / "policy.yaml"), "reload": False},
            events={"endpoints": [endpoint], "retry": {"initial": "50ms", "max": "100ms"}},
        )
        assert (await push(client, "library/python", "3.12-slim", PYTHON)).status == 201
        await sign_library(client, ops_key, PYTHON.digest)
        assert (await push(client, "library/python", "3.12-slim", PATCHED)).status == 201
        await until_drained(client)
        assert hook.received == []  # the first digest is no move; the patch is not signed yet
        await sign_library(client, ops_key, PATCHED.digest)
        deadline = time.monotonic() + 60  # only turns a hang into a failure
        while not hook.received:
            assert time.monotonic() < deadline, "no library.tag.updated event"
            await asyncio.sleep(0.02)
        (got,) = hook.received
        assert got.signature_problem is None
        data = got.event["data"]
        assert (data["previous"], data["digest"], data["library"]) == (
            PYTHON.digest,
            PATCHED.digest,
            "python:3.12-slim",
        )
    finally:
        await runner.cleanup()


async def test_a_signature_moving_the_tag_records_the_apps_pushed_while_pending(
    signed_library: TestClient, ops_key: Any
) -> None:
    client = signed_library
    assert (await push(client, "library/python", "3.12-slim", PYTHON)).status == 201
    # Outside the rule, an app on the pending digest is stored; it has no base yet.
    app = Image([*PY_LAYERS, layer_tar("app")])
    assert (await push(client, "team/web", "v1", app)).status == 201
    assert (await slim(client))["consumers"] == 0
    await sign_library(client, ops_key, PYTHON.digest)
    resp = await client.get("/api/v1/library/python/3.12-slim/consumers")
    assert [
        (c["repository"], c["tag"], c["base_digest"], c["current"])
        for c in (await resp.json())["consumers"]
    ] == [("team/web", "v1", PYTHON.digest, True)]
