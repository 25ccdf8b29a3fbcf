"""Proxied content is announced and recorded as pushed content is: `image.pushed` in the
durable outbox for each new proxied digest (scanners learn of it), and the policy's decision
log names the actor `proxy:<upstream>`."""

from __future__ import annotations

import json

from registry.context import CONTEXT
from tests.proxy.upstreams import proxy_config
from tests.server_process import port_of, reserve_port

POLICY = """\
version: 1
rules:
  - name: no latest from the mirror
    match: {repositories: ["mirror.test/**"], tags: ["latest"], on: [push]}
    deny: "pin a version"
"""


async def test_new_proxied_digests_are_announced_and_recorded(
    start_client, upstream_registry, upstream, tmp_path
):
    digest, _ = await upstream.push_image("team/app", "v1", [b"scanned layer"])
    await upstream.push_image("team/app", "latest", [b"latest layer"])
    (tmp_path / "policy.yaml").write_text(POLICY)
    sock = reserve_port()  # an endpoint that is down: the rows stay in the outbox
    try:
        config = proxy_config(upstream_registry.url, upstream_registry.ca)
        config["events"] = {
            "endpoints": [{"name": "scanner", "url": f"http://127.0.0.1:{port_of(sock)}/hook"}],
            "retry": {"initial": "1h", "max": "1h"},
        }
        client = await start_client(
            policy={"file": str(tmp_path / "policy.yaml"), "reload": False}, **config
        )
        assert (await client.get("/v2/mirror.test/team/app/manifests/v1")).status == 200
        db = client.app[CONTEXT].db
        rows = await db.read("SELECT repository, type, body FROM event_outbox")
        pushed = [json.loads(r[2]) for r in rows if r[1] == "dev.trustyard.image.pushed"]
        assert [(e["data"]["repository"], e["data"]["digest"]) for e in pushed] == [
            ("mirror.test/team/app", digest)
        ]
        assert pushed[0]["data"]["actor"] == "proxy:ref"

        # The push rules judge what comes from upstream: a denied tag is not stored.
        denied = await client.get("/v2/mirror.test/team/app/manifests/latest")
        assert denied.status == 403
        body = await denied.json()
        assert body["errors"][0]["code"] == "DENIED"
        assert "pin a version" in body["errors"][0]["message"]
        assert await db.get_tagged_manifest("mirror.test/team/app", "latest") is None
        await client.app[CONTEXT].policy.flush()
        decisions = await db.read(
            "SELECT identity, action, reference, outcome FROM policy_decisions ORDER BY id"
        )
        assert ("proxy:ref", "push", "latest", "deny") in decisions
    finally:
        sock.close()
