"""The quarantine reader is asked only about images the pull rules refuse: an image the policy
lets be pulled is pulled as itself, by a producer too, without a "quarantined" warning and
recorded with the policy's own reason, so the decision log never calls an allowed pull a
quarantined read (nor a quarantined read an allowed pull)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from registry.context import CONTEXT
from storage.metadata import DecisionRecord
from tests.auth.conftest import PASSWORDS, As, basic, write_accounts
from tests.oci import OCI_MANIFEST, push_image

PERMISSIONS: list[dict[str, Any]] = [
    {"namespace": "team-a/**", "groups": {"dev": "push"}, "users": {"bob": "pull"}},
    {"namespace": "**", "groups": {"ops": "admin"}},
]

#: team-a/held is quarantined; team-a/app matches no rule and is pulled freely.
POLICY = """
version: 1
rules:
  - name: held images wait
    match: {repositories: ["team-a/held"], on: [pull]}
    deny: waiting for review
"""


async def start(start_client: Any, tmp_path: Path, data_dir: Path) -> TestClient:
    write_accounts(data_dir)
    (tmp_path / "policy.yaml").write_text(POLICY)
    return await start_client(
        auth={"service": "trustyard-test", "permissions": PERMISSIONS},
        policy={"file": str(tmp_path / "policy.yaml"), "reload": False},
    )


async def pulls(client: TestClient, repository: str) -> list[DecisionRecord]:
    ctx = client.server.app[CONTEXT]
    await ctx.policy.flush()
    return await ctx.db.list_decisions(repository=repository, action="pull")


async def test_a_producer_pulls_an_allowed_image_without_a_quarantine_warning(
    start_client: Any, tmp_path: Path, data_dir: Path
) -> None:
    client = await start(start_client, tmp_path, data_dir)
    alice = As(client, basic("alice", PASSWORDS["alice"]))
    await push_image(alice, "team-a/app", "v1")
    resp = await alice.get("/v2/team-a/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 200
    assert "Warning" not in resp.headers
    rows = await pulls(client, "team-a/app")
    assert [(r.identity, r.outcome, r.rule, r.reason) for r in rows] == [
        ("alice", "allow", None, "no rule matches")
    ]


async def test_a_producer_reads_a_quarantined_image_with_the_warning_and_the_reason(
    start_client: Any, tmp_path: Path, data_dir: Path
) -> None:
    """The other side of the same line: the refused image is read as quarantined, and said so."""
    client = await start(start_client, tmp_path, data_dir)
    alice = As(client, basic("alice", PASSWORDS["alice"]))
    await push_image(alice, "team-a/held", "v1")
    resp = await alice.get("/v2/team-a/held/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 200
    reason = (
        "quarantined; read by a producer of team-a/held "
        '(rule "held images wait": waiting for review)'
    )
    escaped = reason.replace('"', '\\"')
    assert resp.headers["Warning"] == f'299 trustyard "{escaped}"'
    rows = await pulls(client, "team-a/held")
    assert [(r.identity, r.outcome, r.reason) for r in rows] == [("alice", "allow", reason)]


async def test_each_read_of_a_quarantined_blob_is_logged_with_who_and_why(
    start_client: Any, tmp_path: Path, data_dir: Path, caplog: Any
) -> None:
    """The operator's log names every quarantined blob a producer reads, and nothing for a
    reader who was refused (that is in the decision log as a denial)."""
    client = await start(start_client, tmp_path, data_dir)
    alice = As(client, basic("alice", PASSWORDS["alice"]))
    _, manifest = await push_image(alice, "team-a/held", "v1")
    layer = json.loads(manifest)["layers"][0]["digest"]
    caplog.set_level(logging.INFO, logger="trustyard.policy")
    bob = As(client, basic("bob", PASSWORDS["bob"]))
    assert (await bob.get(f"/v2/team-a/held/blobs/{layer}")).status == 403
    assert [r for r in caplog.records if "quarantined image" in r.getMessage()] == []
    assert (await alice.get(f"/v2/team-a/held/blobs/{layer}")).status == 200
    assert [r.getMessage() for r in caplog.records if "quarantined image" in r.getMessage()] == [
        "blob of a quarantined image of team-a/held read: "
        "quarantined; read by a producer of team-a/held"
    ]
