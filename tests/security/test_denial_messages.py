"""What a refused client prints names only the rules that refused it: a `warn` rule that also
failed is recorded (and listed in the error's detail with its mode) but is not presented as a
reason for the refusal, so a developer fixes what actually blocks them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.oci import OCI_MANIFEST, error_codes, push_image

POLICY = """\
version: 1
rules:
  - name: app is being reviewed
    match: {repositories: ["app/**"], on: [pull]}
    mode: warn
    deny: under review
  - name: app is frozen
    match: {repositories: ["app/**"], on: [pull]}
    deny: frozen
"""


async def test_a_refusal_names_the_enforcing_rule_and_not_the_warning(
    start_client: Any, tmp_path: Path
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    await push_image(client, "app/web", "v1")
    resp = await client.get("/v2/app/web/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 403
    body = await resp.json()
    assert error_codes(body) == ["DENIED"]
    error = body["errors"][0]
    assert error["message"] == 'rule "app is frozen": frozen'
    assert [(r["rule"], r["mode"], r["reason"]) for r in error["detail"]["rules"]] == [
        ("app is frozen", "enforce", "frozen"),
        ("app is being reviewed", "warn", "under review"),
    ]
