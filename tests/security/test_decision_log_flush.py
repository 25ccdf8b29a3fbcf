"""Every decision reaches the durable log on its own, within a few flush intervals, not only
when someone reads the log (the decisions API flushes first) or the server stops: a crash
must not take the record of what was pulled with it (refusals are written at once; allowed
pulls are folded and written by a background flusher). Read through the metadata store, since
every API that shows decisions flushes them itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from policies.gateway import FLUSH_INTERVAL
from registry.context import CONTEXT
from tests.oci import push_image
from tests.policies.test_signatures_notation import _certificate
from tests.security.test_expired_verdicts import POLICY
from tests.signing import pull


async def test_an_allowed_pull_is_logged_without_anyone_asking(
    start_client: Any, tmp_path: Path
) -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("Acme Root", root_key, "Acme Root", root_key, ca=True, days=3650)
    (tmp_path / "corp-ca.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "policy.yaml").write_text(POLICY)  # no rule for dev/**: its pulls are allowed
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    await push_image(client, "dev/app", "v1")
    assert await pull(client, "dev/app", "v1") == (200, "")
    db = client.server.app[CONTEXT].db
    deadline = time.monotonic() + 20 * FLUSH_INTERVAL
    logged: list[Any] = []
    while not logged and time.monotonic() < deadline:  # wait for the flush, with a timeout
        logged = await db.list_decisions(repository="dev/app", action="pull")
        if not logged:
            await asyncio.sleep(FLUSH_INTERVAL / 10)
    assert [(d.action, d.repository, d.outcome) for d in logged] == [("pull", "dev/app", "allow")]
