"""The manifest pipeline: a push is checked and stored under the tag guard, then observed; what
happens after the commit never undoes it, and nothing slow holds the guard (the lineage is
traced before it, a signature verified after the commit).

Slow post-commit work is made slow deterministically: the test holds an event the observer
waits on (an `asyncio.Event` for lineage, a `threading.Event` for a verification thread), and
lets it go once it has shown what it needed to."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec

from policies.errors import PolicyDenied
from policies.gateway import PolicyGate
from policies.signatures import cosign as cosign_module
from registry.context import CONTEXT, PIPELINE
from registry.pipeline import ManifestPush
from registry.pipeline import observers as observers_module
from tests.library.images import Image, layer_tar, push
from tests.oci import error_codes, push_blob, push_image
from tests.signing import (
    pull,
    push_cosign_signature,
    sign,
    simple_signing_payload,
    start_trusting,
)

#: Long enough never to be reached on a loaded machine; the tests wait for conditions, and this
#: only turns a hang (the property broken) into a failure.
PATIENCE = 60

POLICY = """\
version: 1
trust:
  keys:
    release: {pem_file: release.pub}
library:
  images:
    - name: python
      tags: ["3.12-slim"]
rules:
  - name: apps build on the library
    match: {repositories: ["apps/**"], on: [push]}
    require:
      base_image: {from_library: true}
  - name: prod is signed by release
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      signature: {any_of: [release]}
"""

PY_LAYERS = [layer_tar(f"python-{i}") for i in range(3)]
PYTHON = Image(PY_LAYERS)
APP = Image([*PY_LAYERS, layer_tar("app")])
# Outside every rule's repositories: pushed without a base, traced after the commit.
TEAM_A = Image([layer_tar("team-a")])
TEAM_B = Image([layer_tar("team-b")])


@pytest.fixture
def release_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def registry(
    start_client: Any, tmp_path: Path, release_key: ec.EllipticCurvePrivateKey
) -> TestClient:
    return await start_trusting(start_client, tmp_path, POLICY, {"release": release_key})


async def metric(client: TestClient, observer: str) -> int:
    """`trustyard_pipeline_observer_failures_total` of one observer, read from /metrics."""
    text = await (await client.get("/metrics")).text()
    prefix = f'trustyard_pipeline_observer_failures_total{{observer="{observer}"}} '
    [line] = [line for line in text.splitlines() if line.startswith(prefix)]
    return int(line[len(prefix) :])


async def consumers(client: TestClient) -> list[tuple[str, str, str]]:
    resp = await client.get("/api/v1/library/python/3.12-slim/consumers")
    assert resp.status == 200, await resp.text()
    return [(c["repository"], c["tag"], c["base_digest"]) for c in (await resp.json())["consumers"]]


async def decisions(client: TestClient, repository: str) -> list[tuple[str, str, str]]:
    rows = await client.server.app[CONTEXT].db.list_decisions(limit=100, repository=repository)
    return [(r.action, r.reference, r.outcome) for r in rows]


async def test_an_observer_failing_after_the_commit_never_fails_the_push(
    registry: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: PolicyGate, check: Any) -> None:
        raise RuntimeError("decision counting unavailable")

    monkeypatch.setattr(PolicyGate, "pushed", broken)
    assert await metric(registry, "decision_log") == 0
    with caplog.at_level(logging.ERROR, logger="trustyard.pipeline"):
        resp = await push(registry, "library/python", "3.12-slim", PYTHON)
        assert resp.status == 201, await resp.text()
        assert resp.headers["Docker-Content-Digest"] == PYTHON.digest
        resp = await push(registry, "apps/web", "v1", APP)
        assert resp.status == 201, await resp.text()
    # Stored and served, byte for byte.
    got = await registry.get("/v2/apps/web/manifests/v1")
    assert (got.status, await got.read()) == (200, APP.manifest)
    # Logged (naming the observer and the push) and counted, once per push.
    failures = [r for r in caplog.records if "decision_log failed" in r.getMessage()]
    assert len(failures) == 2
    assert "after the push of apps/web@" + APP.digest in failures[1].getMessage()
    assert await metric(registry, "decision_log") == 2
    assert await metric(registry, "library") == 0
    # The observers after the failing one still ran: the app's lineage is recorded.
    assert await consumers(registry) == [("apps/web", "v1", PYTHON.digest)]
    # The "allow" row was committed with the push itself (staged in its transaction), so
    # nothing failing after the commit can leave a stored push unlogged.
    assert await decisions(registry, "apps/web") == [("push", "v1", "allow")]


async def test_an_allowed_push_the_storage_refuses_leaves_no_allow_row(
    registry: TestClient,
) -> None:
    # The policy lets it through, but its config blob was never pushed: the decision row was
    # staged in the push's transaction, which stored nothing, so no "allow" row is left.
    for blob in TEAM_A.blobs()[1:]:
        await push_blob(registry, "team/a", blob)
    resp = await registry.put(
        "/v2/team/a/manifests/v1",
        data=TEAM_A.manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert (resp.status, error_codes(await resp.json())) == (400, ["MANIFEST_BLOB_UNKNOWN"])
    assert await decisions(registry, "team/a") == []
    # Pushed whole, it is stored and logged once, as allowed.
    resp = await push(registry, "team/a", "v1", TEAM_A)
    assert resp.status == 201, await resp.text()
    assert await decisions(registry, "team/a") == [("push", "v1", "allow")]


async def test_a_denied_push_stores_nothing_and_logs_the_denial(registry: TestClient) -> None:
    resp = await push(registry, "library/python", "3.12-slim", PYTHON)
    assert resp.status == 201
    assert (await push(registry, "apps/web", "v1", APP)).status == 201
    # Not built on the library: refused, with the rule's reason.
    stray = Image([layer_tar("not-from-the-library")])
    resp = await push(registry, "apps/web", "v1", stray)
    body = await resp.json()
    assert (resp.status, error_codes(body)) == (403, ["DENIED"])
    assert body["errors"][0]["message"].startswith('rule "apps build on the library": ')
    # Nothing stored: the tag did not move, the manifest is unknown by digest.
    got = await registry.get("/v2/apps/web/manifests/v1")
    assert got.headers["Docker-Content-Digest"] == APP.digest
    got = await registry.get(f"/v2/apps/web/manifests/{stray.digest}")
    assert (got.status, error_codes(await got.json())) == (404, ["MANIFEST_UNKNOWN"])
    # The denial is in the decision log; no observer ran (nor failed) for it.
    assert await decisions(registry, "apps/web") == [
        ("push", "v1", "deny"),
        ("push", "v1", "allow"),
    ]
    assert await consumers(registry) == [("apps/web", "v1", PYTHON.digest)]
    for observer in ("evidence_cache", "events", "decision_log", "library", "signature_proofs"):
        assert await metric(registry, observer) == 0


async def test_a_slow_lineage_trace_does_not_hold_the_tag(
    registry: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    real = observers_module.trace_lineage
    calls = 0

    async def slow_trace(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first push's lineage waits for the test
            entered.set()
            await release.wait()
        return await real(*args, **kwargs)

    monkeypatch.setattr(observers_module, "trace_lineage", slow_trace)
    first = asyncio.ensure_future(push(registry, "team/web", "v1", TEAM_A))
    await asyncio.wait_for(entered.wait(), PATIENCE)
    # The first push is tracing its lineage, before its tag guard: the tag is free for the next.
    second = await asyncio.wait_for(push(registry, "team/web", "v1", TEAM_B), PATIENCE)
    assert second.status == 201, await second.text()
    assert not first.done()
    got = await registry.get("/v2/team/web/manifests/v1")
    assert got.headers["Docker-Content-Digest"] == TEAM_B.digest
    release.set()
    # Traced, the first push is decided and stored after the second.
    resp = await asyncio.wait_for(first, PATIENCE)
    assert resp.status == 201, await resp.text()
    got = await registry.get("/v2/team/web/manifests/v1")
    assert got.headers["Docker-Content-Digest"] == TEAM_A.digest


async def test_a_slow_signature_verification_stalls_neither_the_loop_nor_the_tag(
    registry: TestClient, release_key: ec.EllipticCurvePrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest, _ = await push_image(registry, "prod/app", "v1")
    entered, release = threading.Event(), threading.Event()
    real = cosign_module.verify_layer
    threads: list[str] = []

    def slow_verify(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        if len(threads) == 1:  # a large signature, valid but slow: it waits for the test
            entered.set()
            assert release.wait(PATIENCE)
        return real(*args)

    monkeypatch.setattr(cosign_module, "verify_layer", slow_verify)
    payload = simple_signing_payload("localhost:5000/prod/app", digest)
    first = asyncio.ensure_future(
        push_cosign_signature(registry, "prod/app", digest, payload, sign(release_key, payload))
    )
    try:
        assert await asyncio.to_thread(entered.wait, PATIENCE)
        # The verification holds its thread: the event loop answers other clients ...
        resp = await asyncio.wait_for(registry.get("/v2/prod/app/tags/list"), PATIENCE)
        assert resp.status == 200
        assert "v1" in (await resp.json())["tags"]
        # ... and the signature's tag is free: a second signature is pushed to it meanwhile.
        again = await asyncio.wait_for(
            push_cosign_signature(
                registry, "prod/app", digest, payload, sign(release_key, payload)
            ),
            PATIENCE,
        )
        assert not first.done()
    finally:
        release.set()
    assert await asyncio.wait_for(first, PATIENCE) != again
    assert threads and all(name.startswith("trustyard-verify") for name in threads)
    assert await pull(registry, "prod/app", "v1") == (200, "")


async def test_the_pipeline_takes_manifests_that_did_not_come_over_http(
    registry: TestClient,
) -> None:
    """The entry point a pull-through cache uses: the same checks and the same observers."""
    pipeline = registry.server.app[PIPELINE]
    for blob in PYTHON.blobs():
        await push_blob(registry, "library/python", blob)
    stored = await pipeline.push(
        ManifestPush("library/python", "3.12-slim", PYTHON.manifest, None, "proxy")
    )
    assert stored.digest == PYTHON.digest
    got = await registry.get("/v2/library/python/manifests/3.12-slim")
    assert (got.status, await got.read()) == (200, PYTHON.manifest)
    # The policy decides as for an HTTP push: an app not built on the library is refused.
    stray = Image([layer_tar("from-elsewhere")])
    for blob in stray.blobs():
        await push_blob(registry, "apps/web", blob)
    with pytest.raises(PolicyDenied) as refused:
        await pipeline.push(ManifestPush("apps/web", "v1", stray.manifest, None, "proxy"))
    assert refused.value.message.startswith('rule "apps build on the library": ')
    assert (await registry.get("/v2/apps/web/manifests/v1")).status == 404
    # The observers ran: the library tag's history moved, lineage is recorded for a good app.
    for blob in APP.blobs():
        await push_blob(registry, "apps/web", blob)
    await pipeline.push(ManifestPush("apps/web", "v1", APP.manifest, None, "proxy"))
    assert await consumers(registry) == [("apps/web", "v1", PYTHON.digest)]
    assert ("push", "v1", "allow") in await decisions(registry, "apps/web")


async def test_a_delete_goes_through_the_same_observers(
    registry: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await push(registry, "library/python", "3.12-slim", PYTHON)).status == 201

    def broken(self: PolicyGate, repository: str) -> None:
        raise RuntimeError("evidence cache unavailable")

    monkeypatch.setattr(PolicyGate, "evidence_changed", broken)
    resp = await registry.delete("/v2/library/python/manifests/3.12-slim")
    assert resp.status == 202, await resp.text()
    assert await metric(registry, "evidence_cache") == 1
    got = await registry.get("/v2/library/python/manifests/3.12-slim")
    assert (got.status, error_codes(await got.json())) == (404, ["MANIFEST_UNKNOWN"])
    # The library tag's history ended in the delete's own transaction.
    library = await (await registry.get("/api/v1/library")).json()
    assert library["images"][0]["tags"][0]["digest"] is None
