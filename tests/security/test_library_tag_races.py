"""A pusher racing a library tag move against the work a push does around its commit.

The library follows its registry tags: a declared tag's history (what the library calls current,
what `base_image` and the stale report compare images with) and every image's lineage flags. That
work runs outside the library tag's guard (a signature is verified after the push's commit, an
image is traced before it and its lineage written in the push's transaction), and some of it is
slow (verifying a signature, tracing an image), slow enough for an attacker to stretch on
purpose (a signature at the verification limits, many images to trace). Whatever ends first,
the library must agree with the registry tags in the end:

- a signature verified while the tag moved on must not bring the library tag back to the digest
  it signs;
- an image's lineage recorded while its base's tag moved must not call the old base current.

Each slow step is held by an event the test controls (no sleeps)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec

from policies import facts as facts_module
from policies.library.history import tag_history
from policies.signatures import cosign as cosign_module
from registry.context import CONTEXT
from tests.library.images import Image, layer_tar, push
from tests.library.test_signed_by import POLICY as SIGNED_POLICY
from tests.signing import push_cosign_signature, sign, simple_signing_payload, start_trusting

#: Only turns a hang (the property broken) into a failure; nothing waits for it to pass.
PATIENCE = 60


POLICY = """\
version: 1
library:
  images:
    - name: python
      tags: ["3.12-slim"]
rules:
  - name: apps build on the library
    match: {repositories: ["apps/**"], on: [push]}
    require:
      base_image: {from_library: true}
"""

PY_LAYERS = [layer_tar(f"python-{i}") for i in range(3)]
PYTHON = Image(PY_LAYERS)
PATCHED = Image([*PY_LAYERS[:2], layer_tar("python-2-patched")])
APP = Image([*PY_LAYERS, layer_tar("app")])


async def current(client: TestClient) -> list[str]:
    history = await tag_history(client.server.app[CONTEXT].db, "python", "3.12-slim")
    return [h.digest for h in history if h.current]


async def registry_tag(client: TestClient) -> str:
    resp = await client.get("/v2/library/python/manifests/3.12-slim")
    assert resp.status == 200
    return resp.headers["Docker-Content-Digest"]


async def test_a_signature_verified_while_the_tag_moved_does_not_bring_the_library_back(
    start_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = ec.generate_private_key(ec.SECP256R1())
    client = await start_trusting(start_client, tmp_path, SIGNED_POLICY, {"ops": ops})
    assert (await push(client, "library/python", "3.12-slim", PYTHON)).status == 201
    assert await current(client) == []  # pending its signature

    entered, release = threading.Event(), threading.Event()
    real = cosign_module.verify_layer
    calls: list[int] = []

    def slow_verify(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # the attacker's signature, at the limits: slow to verify
            entered.set()
            assert release.wait(PATIENCE)
        return real(*args)

    monkeypatch.setattr(cosign_module, "verify_layer", slow_verify)
    payload = simple_signing_payload("localhost:5000/library/python", PYTHON.digest)
    signing = asyncio.ensure_future(
        push_cosign_signature(client, "library/python", PYTHON.digest, payload, sign(ops, payload))
    )
    try:
        assert await asyncio.to_thread(entered.wait, PATIENCE)
        # While the signature of PYTHON is verified, ops roll the tag out to a patched image.
        resp = await asyncio.wait_for(
            push(client, "library/python", "3.12-slim", PATCHED), PATIENCE
        )
        assert resp.status == 201, await resp.text()
    finally:
        release.set()
    await asyncio.wait_for(signing, PATIENCE)
    # The registry tag is on PATCHED: the library does not go back to PYTHON, signed or not.
    assert await registry_tag(client) == PATCHED.digest
    assert await current(client) == []
    library = await (await client.get("/api/v1/library")).json()
    assert library["images"][0]["tags"][0]["pending"]["digest"] == PATCHED.digest
    # Once PATCHED is signed, the library follows the tag as it is.
    payload = simple_signing_payload("localhost:5000/library/python", PATCHED.digest)
    await push_cosign_signature(
        client, "library/python", PATCHED.digest, payload, sign(ops, payload)
    )
    assert await current(client) == [PATCHED.digest]


async def test_lineage_recorded_while_the_base_moved_is_not_called_current(
    start_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    assert (await push(client, "library/python", "3.12-slim", PYTHON)).status == 201
    assert await current(client) == [PYTHON.digest]

    entered, release = asyncio.Event(), asyncio.Event()
    real = facts_module.trace_lineage
    calls = 0

    async def slow_trace(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        lineages = await real(*args, **kwargs)
        if calls == 1:  # the app's lineage, traced on PYTHON while PYTHON was current
            entered.set()
            await release.wait()
        return lineages

    monkeypatch.setattr(facts_module, "trace_lineage", slow_trace)
    pushing = asyncio.ensure_future(push(client, "apps/web", "v1", APP))
    try:
        await asyncio.wait_for(entered.wait(), PATIENCE)
        # The app is traced; before its push's transaction writes the lineage, the base's tag
        # moves on.
        resp = await asyncio.wait_for(
            push(client, "library/python", "3.12-slim", PATCHED), PATIENCE
        )
        assert resp.status == 201, await resp.text()
        assert await current(client) == [PATCHED.digest]
    finally:
        release.set()
    assert (await asyncio.wait_for(pushing, PATIENCE)).status == 201
    resp = await client.get("/api/v1/library/python/3.12-slim/consumers")
    found = [
        (c["repository"], c["base_digest"], c["current"]) for c in (await resp.json())["consumers"]
    ]
    assert found == [("apps/web", PYTHON.digest, False)]
    library = await (await client.get("/api/v1/library")).json()
    assert library["images"][0]["tags"][0]["stale_consumers"] == 1
