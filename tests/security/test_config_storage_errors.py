"""An image config the storage cannot serve (an S3 backend unreachable, a blob damaged) denies
with the storage's own words, like a config lost from disk: the rule that needs it never passes,
and the refusal is a 403 with the reason, not a 500.

Storage errors carry no `strerror` (they are not `OSError`s): the reason shown is their message."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from registry.context import CONTEXT
from storage.errors import StorageUnavailable
from storage.oci.digests import Digest
from tests.oci import push_image
from tests.security.test_config_read_failures import POLICY
from tests.signing import pull


async def test_a_config_the_storage_cannot_serve_denies_with_its_reason(
    start_client: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    _, manifest = await push_image(client, "prod/app", "v1")
    config = json.loads(manifest)["config"]["digest"]
    store = client.server.app[CONTEXT].store
    read = store.read

    def unreachable(digest: Digest, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The backend holding the config cannot be reached; other blobs read as usual."""
        if str(digest) == config:
            raise StorageUnavailable({"backend": "s3", "reason": "connection refused"})
        return read(digest, start, end)

    monkeypatch.setattr(store, "read", unreachable)
    status, message = await pull(client, "prod/app", "v1")
    assert status == 403
    assert message == (
        f'rule "prod images name their source": cannot be judged: the image config '
        f"{config[:19]}\u2026 could not be read (the storage backend is unavailable)"
    )
