"""The management API the console reads: repositories, tags, one manifest's details, the
quarantine, the decision summary, the rebuild list and health, on a real app over loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from registry.context import CONTEXT
from registry.handlers import quarantine_api
from storage.gc import collect_garbage
from tests.oci import push_image
from tests.signing import push_cosign_signature, sign, simple_signing_payload, start_trusting

TRIVY = Path(__file__).parents[1] / "scans" / "fixtures" / "trivy-alpine-39-high-critical.json"
TOKEN = "console-test-token-0123456789"

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
  - name: no criticals in prod
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      vulnerabilities:
        max: {critical: 0}
        require_scan: true
        exceptions:
          - {id: CVE-2019-14697, until: 2999-01-31, reason: "musl on x87 only"}
"""


async def start(start_client: Any, tmp_path: Path) -> tuple[Any, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "policy.yaml").write_text(POLICY)
    client = await start_trusting(
        lambda **kw: start_client(**kw, scanners=[{"name": "trivy-ci", "token": TOKEN}]),
        folder,
        POLICY,
        {"release": key},
    )
    return client, key


async def test_repositories_and_tags_page_with_counts(client):
    for name in ("a/one", "a/two", "b/three"):
        await push_image(client, name, "1.0")
    await push_image(client, "a/one", "2.0")

    resp = await client.get("/api/v1/repositories", params={"n": "2"})
    assert resp.status == 200
    body = await resp.json()
    assert [r["name"] for r in body["repositories"]] == ["a/one", "a/two"]
    assert body["repositories"][0]["tags"] == 2 and body["repositories"][0]["manifests"] == 2
    assert body["next"] == "/api/v1/repositories?n=2&last=a%2Ftwo"
    body = await (await client.get(body["next"])).json()
    assert [r["name"] for r in body["repositories"]] == ["b/three"] and "next" not in body

    body = await (await client.get("/api/v1/repositories", params={"prefix": "b/"})).json()
    assert [r["name"] for r in body["repositories"]] == ["b/three"]

    resp = await client.get("/api/v1/repositories/a/one/tags")
    tags = (await resp.json())["tags"]
    assert [t["name"] for t in tags] == ["1.0", "2.0"]
    assert tags[0]["digest"].startswith("sha256:") and tags[0]["size"] > 0

    resp = await client.get("/api/v1/repositories/nope/tags")
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] == "NAME_UNKNOWN"
    resp = await client.get("/api/v1/repositories", params={"n": "0"})
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


async def test_manifest_details_signatures_scans_and_quarantine(start_client, tmp_path):
    client, key = await start(start_client, tmp_path)
    signed, _ = await push_image(client, "prod/api", "1.0", layers=[b"api-layer"])
    unsigned, _ = await push_image(client, "prod/worker", "2.0", layers=[b"worker-layer"])
    payload = simple_signing_payload("prod/api", signed)
    await push_cosign_signature(client, "prod/api", signed, payload, sign(key, payload))
    resp = await client.post(
        f"/api/v1/scans?digest={signed}",
        data=TRIVY.read_bytes(),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert resp.status == 201, await resp.text()

    resp = await client.get("/api/v1/repositories/prod/api/manifests/1.0")
    assert resp.status == 200
    d = await resp.json()
    assert d["digest"] == signed and d["kind"] == "image" and d["tags"] == ["1.0"]
    assert [s["signer"] for s in d["signatures"]] == ["release"]
    assert d["signatures"][0]["verified"] is True and d["signatures"][0]["current_trust"]
    assert d["size"] == d["manifest_size"] + sum(layer["size"] for layer in d["layers"])
    [scan] = d["scans"]
    assert scan["scanner"] == "trivy-ci" and scan["summary"]["by_severity"]["critical"]
    excepted = [f for f in scan["findings"] if f["exception"]]
    assert {f["id"] for f in excepted} == {"CVE-2019-14697"}
    assert excepted[0]["exception"]["reason"] == "musl on x87 only"
    # The signature manifest refers to nothing by subject, so no referrers; no library.
    assert d["referrers"] == [] and d["lineage"] == []

    resp = await client.get(f"/api/v1/repositories/prod/worker/manifests/{unsigned}")
    d = await resp.json()
    assert d["signatures"] == [] and d["scans"] == []

    resp = await client.get("/api/v1/quarantine")
    body = await resp.json()
    shown = {(i["repository"], i["tag"]): i for i in body["images"]}
    assert ("prod/worker", "2.0") in shown
    worker = shown[("prod/worker", "2.0")]
    rules = {u["rule"]: u for u in worker["unmet"]}
    assert set(rules) == {"prod is signed by release", "no criticals in prod"}
    assert rules["prod is signed by release"]["line"] == 6
    assert "needs a signature by release" in rules["prod is signed by release"]["message"]
    assert rules["prod is signed by release"]["release"] == [
        "a signature of this digest by release, verified against the policy's trust"
    ]
    assert rules["no criticals in prod"]["release"] == [
        "a scan report from trivy-ci within the rule's limits, or a policy exception for each "
        "finding over them"
    ]
    # prod/api is signed and scanned with its one critical excepted: pullable.
    assert ("prod/api", "1.0") not in shown
    assert body["checked"] == 3  # prod/api:1.0, its .sig tag, prod/worker:2.0

    resp = await client.get("/api/v1/quarantine", params={"n": "1"})
    body = await resp.json()
    assert body["checked"] == 1 and body["next"].startswith("/api/v1/quarantine?n=1&last=prod")
    resp = await client.get("/api/v1/quarantine", params={"last": "no-colon"})
    assert resp.status == 400 and (await resp.json())["errors"][0]["code"] == "QUERY_INVALID"


async def test_decision_summary_and_filters(start_client, tmp_path):
    client, _ = await start(start_client, tmp_path)
    await push_image(client, "prod/worker", "2.0")
    for _ in range(2):
        assert (await client.get("/v2/prod/worker/manifests/2.0")).status == 403
    resp = await client.get("/api/v1/decisions/summary", params={"since": "1h", "buckets": "6"})
    body = await resp.json()
    assert len(body["buckets"]) == 6
    assert body["totals"]["deny"] == 2
    assert body["buckets"][-1]["deny"] == 2
    resp = await client.get(
        "/api/v1/decisions", params={"rule": "prod is signed by release", "outcome": "deny"}
    )
    decisions = (await resp.json())["decisions"]
    assert decisions and all(d["rule"] == "prod is signed by release" for d in decisions)
    resp = await client.get("/api/v1/decisions", params={"identity": "somebody-else"})
    assert (await resp.json())["decisions"] == []
    resp = await client.get("/api/v1/decisions", params={"until": "1h"})
    assert (await resp.json())["decisions"] == []
    resp = await client.get("/api/v1/decisions/summary", params={"buckets": "0"})
    assert resp.status == 400
    resp = await client.get("/api/v1/decisions/summary", params={"since": "-5m"})
    assert resp.status == 400
    resp = await client.get("/api/v1/decisions", params={"last": "٣"})  # an Arabic-Indic 3
    assert resp.status == 400


async def test_health_shows_policy_backlog_storage_and_gc(start_client, tmp_path):
    client, _ = await start(start_client, tmp_path)
    body = await (await client.get("/api/v1/health")).json()
    assert body["policy"]["file"].endswith("policy.yaml")
    assert body["policy"]["text"] == POLICY
    assert [(r["name"], r["line"]) for r in body["policy"]["rules"]] == [
        ("prod is signed by release", 6),
        ("no criticals in prod", 10),
    ]
    assert body["storage"] == {"backend": "filesystem", "delete_enabled": True}
    assert body["gc"] is None
    assert body["events"] == {"pending": 0, "failed": 0, "endpoints": []}
    ctx = client.server.app[CONTEXT]
    await collect_garbage(ctx.db, ctx.store, grace_period=0, stale_upload_age=3600)
    body = await (await client.get("/api/v1/health")).json()
    assert body["gc"]["removed"]["manifests"] == 0 and body["gc"]["finished_at"]


async def test_rebuild_list_downloads_as_csv(client):
    resp = await client.get("/api/v1/library/stale", params={"format": "csv"})
    assert resp.status == 200 and resp.content_type == "text/csv"
    assert (await resp.text()).splitlines() == [
        "repository,tag,digest,base,base_digest,current_digest,replaced_at,behind_seconds,platforms"
    ]
    resp = await client.get("/api/v1/library/stale", params={"format": "xml"})
    assert resp.status == 400


async def test_unknown_api_path_gets_a_json_error(client):
    resp = await client.get("/api/v1/does-not-exist")
    assert resp.status == 404
    assert json.loads(await resp.text())["errors"][0]["code"] == "UNSUPPORTED"


async def test_quarantine_follows_new_evidence(start_client, tmp_path):
    """A remembered verdict never outlives the evidence: once the image is signed and scanned
    clean of unexcepted criticals, it leaves the quarantine on the next look."""
    client, key = await start(start_client, tmp_path)
    digest, _ = await push_image(client, "prod/worker", "2.0", layers=[b"worker-layer"])
    body = await (await client.get("/api/v1/quarantine")).json()
    assert [(i["repository"], i["tag"]) for i in body["images"]] == [("prod/worker", "2.0")]
    payload = simple_signing_payload("prod/worker", digest)
    await push_cosign_signature(client, "prod/worker", digest, payload, sign(key, payload))
    body = await (await client.get("/api/v1/quarantine")).json()
    [worker] = [i for i in body["images"] if i["tag"] == "2.0"]
    assert [u["rule"] for u in worker["unmet"]] == ["no criticals in prod"]
    resp = await client.post(
        f"/api/v1/scans?digest={digest}",
        data=TRIVY.read_bytes(),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert resp.status == 201
    body = await (await client.get("/api/v1/quarantine")).json()
    assert [i for i in body["images"] if i["tag"] == "2.0"] == []


async def test_health_counts_the_backlog_per_endpoint_with_its_last_error(start_client):
    """An endpoint that refuses connections: its events wait in the outbox, counted per
    endpoint with the last error; the endpoint's URL (which may carry credentials) is not shown."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        section = {
            "endpoints": [{"name": "siem", "url": f"http://user:pw@127.0.0.1:{port}/hook"}],
            "retry": {"initial": "1s", "max": "1s", "give_up_after": "1h"},
        }
        client = await start_client(events=section)
        await push_image(client, "team/app", "1.0")
        deadline = time.monotonic() + 20
        while True:
            body = await (await client.get("/api/v1/health")).json()
            [siem] = body["events"]["endpoints"]
            if siem["last_error"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    assert siem["name"] == "siem" and siem["pending"] == 1 and siem["failed"] == 0
    assert siem["last_error"] and siem["oldest"]
    assert body["events"]["pending"] == 1
    assert "user:pw" not in json.dumps(body) and "/hook" not in json.dumps(body)


async def test_quarantine_page_stops_when_its_time_is_spent(start_client, tmp_path, monkeypatch):
    """With the time budget spent at once, a page still looks at MIN_CHECKED tags, then offers
    the rest through `next`; walking `next` covers every tag exactly once."""
    client, _ = await start(start_client, tmp_path)
    for i in range(25):
        await push_image(client, f"prod/svc-{i:02d}", "1.0", layers=[f"svc {i}".encode()])
    monkeypatch.setattr(quarantine_api, "BUDGET", 0.0)
    body = await (await client.get("/api/v1/quarantine")).json()
    assert body["checked"] == quarantine_api.MIN_CHECKED == 20
    seen = [i["repository"] for i in body["images"]]
    assert body["next"] == "/api/v1/quarantine?n=100&last=prod%2Fsvc-19%3A1.0"
    body = await (await client.get(body["next"])).json()
    assert body["checked"] == 5 and "next" not in body
    seen += [i["repository"] for i in body["images"]]
    assert seen == [f"prod/svc-{i:02d}" for i in range(25)]  # all unsigned: all quarantined
