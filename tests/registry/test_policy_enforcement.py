"""Policy on the API: denied pushes store nothing, quarantined pulls, guarded deletes, warn mode,
the decision log and the image status endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from policies.loader import PolicyError, parse_policy
from registry.context import CONTEXT
from tests.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    error_codes,
    push_blob,
    push_image,
    sha256,
)
from tests.security.crafted import push_runnable, push_simple_signature

POLICY = """\
version: 1
rules:
  - name: release tags are immutable
    match: {repositories: ["**"], tags: ["v*"], on: [push, delete]}
    require: {immutable_tags: true}
  - name: no latest in prod
    match: {repositories: ["prod/**"], tags: ["latest"], on: [push]}
    deny: "use a version tag, not latest"
  - name: prod images carry provenance labels
    match: {repositories: ["prod/**"], on: [push]}
    require:
      labels: {org.opencontainers.image.source: "^https://git.example.com/"}
  - name: released images are reviewed
    match: {repositories: ["released/**"], on: [pull]}
    require:
      annotations: {com.example.reviewed: "^yes$"}
  - name: staging prefers oci
    mode: warn
    match: {repositories: ["staging/**"], on: [push, pull]}
    require: {media_types: [docker]}
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
async def gated(start_client: Any, policy_file: Path) -> TestClient:
    return await start_client(policy={"file": str(policy_file), "reload": False})


async def push_labelled(
    client: TestClient,
    name: str,
    reference: str,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    layer: bytes = b"layer",
) -> tuple[Any, str]:
    """Push an image whose config carries `labels`; return (response, manifest digest)."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {"Labels": labels or {}}}
    ).encode()
    await push_blob(client, name, config)
    await push_blob(client, name, layer)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer)],
    }
    if annotations:
        manifest["annotations"] = annotations
    body = json.dumps(manifest).encode()
    resp = await client.put(
        f"/v2/{name}/manifests/{reference}", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    return resp, sha256(body)


SOURCE = {"org.opencontainers.image.source": "https://git.example.com/web"}


async def decisions(client: TestClient, **query: str) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/decisions", params=query)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["decisions"]


async def test_moving_an_immutable_tag_is_denied_and_stores_nothing(gated: TestClient) -> None:
    first, _ = await push_image(gated, "app/web", "v1.2.0", layers=[b"one"])
    resp, second = await push_labelled(gated, "app/web", "v1.2.0", layer=b"two")
    assert resp.status == 403
    body = await resp.json()
    assert error_codes(body) == ["DENIED"]
    message = body["errors"][0]["message"]
    assert message == (
        f'rule "release tags are immutable": tag v1.2.0 already points to '
        f"{first[:19]}…; push a new tag"
    )
    assert body["errors"][0]["detail"]["rules"][0]["rule"] == "release tags are immutable"
    # The tag did not move and the refused manifest was not stored.
    head = await gated.head("/v2/app/web/manifests/v1.2.0")
    assert head.headers["Docker-Content-Digest"] == first
    assert (await gated.get(f"/v2/app/web/manifests/{second}")).status == 404
    logged = await decisions(gated, outcome="deny")
    assert [(d["action"], d["reference"], d["rule"]) for d in logged] == [
        ("push", "v1.2.0", "release tags are immutable")
    ]
    assert logged[0]["digest"] == second and logged[0]["identity"] == "anonymous"


async def test_an_allowed_push_the_storage_refuses_logs_no_allow(gated: TestClient) -> None:
    config = b'{"architecture": "amd64", "os": "linux"}'
    await push_blob(gated, "app/web", config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, b"never uploaded")],
    }
    resp = await gated.put(
        "/v2/app/web/manifests/v1.0.0",
        data=json.dumps(manifest).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_BLOB_UNKNOWN"]
    # The policy allowed it, but nothing was stored: no "allow" row claims it was pushed.
    assert await decisions(gated, action="push") == []
    digest, _ = await push_image(gated, "app/web", "v1.0.0")
    logged = await decisions(gated, action="push")
    assert [(d["outcome"], d["reference"], d["digest"]) for d in logged] == [
        ("allow", "v1.0.0", digest)
    ]


async def test_re_pushing_the_same_manifest_to_an_immutable_tag_is_fine(
    gated: TestClient,
) -> None:
    await push_image(gated, "app/web", "v1", layers=[b"same"])
    await push_image(gated, "app/web", "v1", layers=[b"same"])


async def test_cosign_signature_tags_are_exempt(gated: TestClient) -> None:
    immutable_everything = POLICY.replace('tags: ["v*"], on: [push, delete]', "on: [push]")
    gated.server.app[CONTEXT].policy.policy = parse_policy(immutable_everything)
    signature = "sha256-" + "ab" * 32 + ".sig"
    # cosign moves its tag when it adds a signature: allowed while the tag holds signatures.
    assert (await push_simple_signature(gated, "app/web", signature, b'{"s":1}')).status == 201
    assert (await push_simple_signature(gated, "app/web", signature, b'{"s":2}')).status == 201
    # The spelling alone exempts nothing: a runnable image cannot move the tag.
    resp = await push_runnable(gated, "app/web", signature)
    assert resp.status == 403
    assert "already points to" in (await resp.json())["errors"][0]["message"]
    await push_image(gated, "app/web", "dev", layers=[b"one"])
    resp, _ = await push_labelled(gated, "app/web", "dev", layer=b"two")
    assert resp.status == 403


async def test_deny_rule_message(gated: TestClient) -> None:
    resp, _ = await push_labelled(gated, "prod/web", "latest", labels=SOURCE)
    assert resp.status == 403
    body = await resp.json()
    assert body["errors"][0]["message"] == 'rule "no latest in prod": use a version tag, not latest'
    tags = await gated.get("/v2/prod/web/tags/list")
    assert tags.status == 404 or not (await tags.json())["tags"]


async def test_labels_are_read_from_the_config_blob(gated: TestClient) -> None:
    resp, _ = await push_labelled(gated, "prod/web", "v1")
    assert resp.status == 403
    assert (await resp.json())["errors"][0]["message"] == (
        'rule "prod images carry provenance labels": label org.opencontainers.image.source '
        "missing; set it with LABEL in the Dockerfile"
    )
    resp, _ = await push_labelled(
        gated, "prod/web", "v1", labels={"org.opencontainers.image.source": "https://x/y"}
    )
    assert resp.status == 403
    resp, _digest = await push_labelled(gated, "prod/web", "v1", labels=SOURCE)
    assert resp.status == 201, await resp.text()
    assert (await gated.get("/v2/prod/web/manifests/v1")).status == 200


async def test_both_failing_rules_are_reported(gated: TestClient) -> None:
    resp, _ = await push_labelled(gated, "prod/web", "latest")
    message = (await resp.json())["errors"][0]["message"]
    assert message.startswith('rule "no latest in prod": use a version tag, not latest; rule ')
    assert "prod images carry provenance labels" in message


async def test_pull_quarantine_and_status(gated: TestClient) -> None:
    resp, digest = await push_labelled(gated, "released/tool", "v1")
    assert resp.status == 201
    for method in ("GET", "HEAD"):
        for reference in ("v1", digest):
            pulled = await gated.request(method, f"/v2/released/tool/manifests/{reference}")
            assert pulled.status == 403
    got = await gated.get("/v2/released/tool/manifests/v1")
    assert (await got.json())["errors"][0]["message"] == (
        'rule "released images are reviewed": manifest annotation com.example.reviewed missing'
    )
    status = await gated.get("/api/v1/images/released/tool/v1/status")
    assert status.status == 200
    document = await status.json()
    assert document["status"] == "quarantined"
    assert document["digest"] == digest and document["tags"] == ["v1"]
    assert document["unmet"] == [
        'rule "released images are reviewed": manifest annotation com.example.reviewed missing'
    ]
    resp, reviewed = await push_labelled(
        gated, "released/tool", "v2", annotations={"com.example.reviewed": "yes"}
    )
    assert (await gated.get("/v2/released/tool/manifests/v2")).status == 200
    status = await gated.get(f"/api/v1/images/released/tool/{reviewed}/status")
    assert (await status.json())["status"] == "pullable"
    assert (await gated.get("/api/v1/images/released/tool/nope/status")).status == 404


async def test_pull_decisions_are_cached_and_folded_in_the_log(gated: TestClient) -> None:
    _, _digest = await push_labelled(
        gated, "released/tool", "v1", annotations={"com.example.reviewed": "yes"}
    )
    # The background flusher is stopped (what it folded so far is written): its tick between
    # two of the pulls (a slow machine) would split their row in two. Reading the log flushes.
    await gated.server.app[CONTEXT].policy.close()
    for _ in range(5):
        assert (await gated.get("/v2/released/tool/manifests/v1")).status == 200
    pulls = await decisions(gated, action="pull")
    assert len(pulls) == 1 and pulls[0]["repeats"] == 5 and pulls[0]["outcome"] == "allow"
    # A change in the repository bumps its evidence version: the next pull is decided afresh,
    # which the log shows as a second decision rather than a sixth repeat.
    await push_image(gated, "released/tool", "other")
    assert (await gated.get("/v2/released/tool/manifests/v1")).status == 200
    pulls = await decisions(gated, action="pull")
    assert sorted(p["repeats"] for p in pulls) == [1, 5]


async def test_denied_pulls_are_each_logged(gated: TestClient) -> None:
    await push_labelled(gated, "released/tool", "v1")
    for _ in range(3):
        assert (await gated.get("/v2/released/tool/manifests/v1")).status == 403
    denied = await decisions(gated, outcome="deny", action="pull")
    assert len(denied) == 3


async def test_warn_mode_allows_with_a_warning_header(gated: TestClient) -> None:
    resp, _ = await push_labelled(gated, "staging/web", "dev")
    assert resp.status == 201
    warning = resp.headers["Warning"]
    assert warning.startswith('299 trustyard "policy (warn mode): rule \\"staging prefers oci\\"')
    pulled = await gated.get("/v2/staging/web/manifests/dev")
    assert pulled.status == 200 and "Warning" in pulled.headers
    warned = await decisions(gated, outcome="warn")
    assert {d["action"] for d in warned} == {"push", "pull"}


async def test_deleting_an_immutable_tag_or_its_manifest_is_denied(gated: TestClient) -> None:
    digest, _ = await push_image(gated, "app/web", "v1")
    resp = await gated.delete("/v2/app/web/manifests/v1")
    assert resp.status == 403
    assert (await resp.json())["errors"][0]["message"] == (
        'rule "release tags are immutable": tag v1 is immutable and cannot be deleted'
    )
    resp = await gated.delete(f"/v2/app/web/manifests/{digest}")
    assert resp.status == 403
    assert (await gated.get("/v2/app/web/manifests/v1")).status == 200
    # Other tags and untagged manifests delete as before.
    other, _ = await push_image(gated, "app/web", "dev")
    assert (await gated.delete("/v2/app/web/manifests/dev")).status == 202
    assert (await gated.delete(f"/v2/app/web/manifests/{other}")).status == 202
    assert (await gated.delete("/v2/app/web/manifests/nope")).status == 404


async def test_index_needs_every_required_platform(start_client: Any, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nrules:\n  - name: multi-arch\n"
        "    match: {repositories: ['**'], tags: ['v*'], on: [push]}\n"
        "    require: {platforms: [linux/amd64, linux/arm64], max_size: 1KiB}\n"
    )
    client = await start_client(policy={"file": str(path)})
    children = []
    for arch in ("amd64", "arm64"):
        _digest, body = await push_image(
            client, "multi", f"child-{arch}", layers=[arch.encode()], architecture=arch
        )
        children.append(
            {**descriptor(OCI_MANIFEST, body), "platform": {"os": "linux", "architecture": arch}}
        )
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children[:1]}
    resp = await client.put(
        "/v2/multi/manifests/v1",
        data=json.dumps(index).encode(),
        headers={"Content-Type": OCI_INDEX},
    )
    assert resp.status == 403
    assert (
        "platform linux/arm64 missing (this index has linux/amd64)"
        in (await resp.json())["errors"][0]["message"]
    )
    index["manifests"] = children
    resp = await client.put(
        "/v2/multi/manifests/v1",
        data=json.dumps(index).encode(),
        headers={"Content-Type": OCI_INDEX},
    )
    assert resp.status == 201, await resp.text()


async def test_decisions_api_filters_and_pages(gated: TestClient) -> None:
    for n in range(5):
        await push_image(gated, "app/web", f"v{n}", layers=[f"l{n}".encode()])
    await push_labelled(gated, "prod/web", "v1")
    everything = await decisions(gated)
    assert len(everything) == 6
    assert [d["reference"] for d in everything[:2]] == ["v1", "v4"]
    assert len(await decisions(gated, repository="app/web")) == 5
    assert len(await decisions(gated, outcome="deny")) == 1
    assert len(await decisions(gated, since="1h")) == 6
    assert await decisions(gated, since="2999-01-01T00:00:00Z") == []
    resp = await gated.get("/api/v1/decisions", params={"n": "4"})
    page = await resp.json()
    assert len(page["decisions"]) == 4 and resp.headers["Link"].endswith('; rel="next"')
    rest = await gated.get(page["next"])
    assert len((await rest.json())["decisions"]) == 2
    assert "Link" not in rest.headers
    bad = await gated.get("/api/v1/decisions", params={"outcome": "maybe"})
    assert bad.status == 400
    assert (await gated.get("/api/v1/decisions", params={"since": "soon"})).status == 400


async def test_without_a_policy_everything_is_allowed_and_said_loudly(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    digest, _ = await push_image(client, "prod/web", "latest")
    await push_image(client, "prod/web", "latest", layers=[b"moved"])
    assert (await client.delete(f"/v2/prod/web/manifests/{digest}")).status == 202
    assert await decisions(client) == []
    status = await client.get("/api/v1/images/prod/web/latest/status")
    document = await status.json()
    assert document["status"] == "pullable" and document["no_policy"] is True


async def test_no_policy_warning_at_start_up(
    start_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await start_client()
    assert any("NO POLICY LOADED" in r.getMessage() for r in caplog.records)


async def test_invalid_policy_stops_start_up(start_client: Any, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nrules: [{name: x}]\n")
    with pytest.raises(PolicyError) as caught:
        await start_client(policy={"file": str(path)})
    assert "rules[0]: missing required key match" in str(caught.value)


async def test_reload_swaps_the_policy_and_keeps_the_last_good_one(
    gated: TestClient, policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = gated.server.app[CONTEXT].policy
    before = gate.policy
    policy_file.write_text("version: 1\nrules: [{name: x}]\n")
    assert gate.reload() is False
    assert gate.policy is before
    assert any("policy reload refused" in r.getMessage() for r in caplog.records)
    policy_file.write_text(
        "version: 1\nrules:\n  - name: nothing in\n    match: {repositories: ['**'], on: [push]}\n"
        "    deny: frozen\n"
    )
    assert gate.reload() is True
    resp, _ = await push_labelled(gated, "any/thing", "x")
    assert resp.status == 403
    assert (await resp.json())["errors"][0]["message"] == 'rule "nothing in": frozen'


async def test_file_change_is_picked_up_by_polling(start_client: Any, policy_file: Path) -> None:
    import asyncio

    client = await start_client(policy={"file": str(policy_file), "poll_interval": 0.05})
    gate = client.server.app[CONTEXT].policy
    version = gate.policy.version
    policy_file.write_text(POLICY + "# edited\n")
    # Wait for the condition (the new version), with a generous timeout: a count of short
    # sleeps is a time budget a loaded machine can use up before the poller's turn.
    async with asyncio.timeout(30):
        while gate.policy.version == version:
            await asyncio.sleep(0.02)  # polling interval of the wait above


async def test_concurrent_pushes_cannot_both_claim_an_immutable_tag(gated: TestClient) -> None:
    import asyncio

    bodies = []
    for n in range(4):
        layer = f"race-{n}".encode()
        config = json.dumps({"os": "linux", "architecture": "amd64", "n": n}).encode()
        await push_blob(gated, "app/race", config)
        await push_blob(gated, "app/race", layer)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer)],
        }
        bodies.append(json.dumps(manifest).encode())
    responses = await asyncio.gather(
        *(
            gated.put(
                "/v2/app/race/manifests/v1", data=body, headers={"Content-Type": OCI_MANIFEST}
            )
            for body in bodies
        )
    )
    assert sorted(r.status for r in responses) == [201, 403, 403, 403]


async def test_evidence_arriving_later_invalidates_cached_pull_decisions(
    gated: TestClient,
) -> None:
    # The version is what cached decisions are keyed by; that a report arriving later really
    # changes the next pull's answer is shown through the API in tests/scans
    # (test_new_report_bumps_evidence_and_decision_is_recomputed).
    await push_labelled(gated, "released/tool", "v1")
    gate = gated.server.app[CONTEXT].policy
    before = await gate.evidence_version("released/tool")
    assert (await gated.get("/v2/released/tool/manifests/v1")).status == 403
    await gate.evidence_arrived("released/tool")
    assert await gate.evidence_version("released/tool") == before + 1
    assert (await gated.get("/v2/released/tool/manifests/v1")).status == 403
