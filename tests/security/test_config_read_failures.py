"""An image config that cannot be read when a rule needs it (its blob lost or damaged on disk)
denies, and the refusal names the config by its short digest and says why: the rule never
passes on what it could not read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from registry.context import CONTEXT
from storage.oci.digests import parse_digest
from tests.oci import push_image
from tests.signing import pull

POLICY = """\
version: 1
rules:
  - name: prod images name their source
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      labels: {org.opencontainers.image.source: "^https://git.example.com/"}
"""


async def test_a_config_lost_from_disk_denies_and_is_named(
    start_client: Any, tmp_path: Path
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    _, manifest = await push_image(client, "prod/app", "v1")
    config = json.loads(manifest)["config"]["digest"]
    path = client.server.app[CONTEXT].store.local_path(parse_digest(config))
    assert path is not None
    path.unlink()
    status, message = await pull(client, "prod/app", "v1")
    assert status == 403
    assert message == (
        f'rule "prod images name their source": cannot be judged: the image config '
        f"{config[:19]}\u2026 could not be read (No such file or directory)"
    )
    assert str(tmp_path) not in message  # where the registry keeps its data stays private
