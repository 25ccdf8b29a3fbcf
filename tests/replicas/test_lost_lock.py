"""A replica whose PostgreSQL lock connection is ended while it holds a tag's lock does not go on
as if it held it: the push is refused with 503 and the reason, nothing is stored, and the next
push takes the lock on a fresh connection.

A push to a declared library tag holds the tag's lock from its check to its commit (the
library's `signed_by` follow reads the registry tag and moves the library's under it; other
tags re-check the tag in their store's transaction instead, `test_tag_race`). A session
advisory lock is dropped by the server with its connection, and nothing tells the holder;
another replica could take the tag and pass the immutability check meanwhile. The push is
paused between taking the lock and its commit by holding the `tags` table (its policy check
reads the tag), while the test ends the lock's backend with `pg_terminate_backend`. (SQLite's
record locks cannot be lost while their process lives.)
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from storage.metadata.coordination import tag_key
from tests.oci import OCI_MANIFEST
from tests.replicas.conftest import StartReplicas
from tests.replicas.images import LIBRARY_RELEASES, image_manifest
from tests.replicas.locks import lose_tag_lock_during

#: Only turns a hang into a failure.
PATIENCE = 60.0


@pytest.mark.parametrize("metadata_url", ["postgresql"], indirect=True)
async def test_a_push_whose_tag_lock_was_dropped_is_refused_not_committed(
    start_replicas: StartReplicas, metadata_url: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(LIBRARY_RELEASES)
    replica = start_replicas("--policy", str(policy), count=1).a
    name, tag = "library/base", "v1"
    async with aiohttp.ClientSession(base_url=replica.url) as client:
        content = await image_manifest(client, name, 1, "lost-lock")
        # The push's policy check reads the tag: it waits behind a transaction holding `tags`,
        # holding the tag's lock, whose backend is then ended.
        push = await lose_tag_lock_during(
            metadata_url,
            tag_key(name, tag),
            lambda: client.put(
                f"/v2/{name}/manifests/{tag}",
                data=content,
                headers={"Content-Type": OCI_MANIFEST},
            ),
            PATIENCE,
        )
        async with await push as resp:
            assert resp.status == 503, await resp.text()
            body = await resp.json()
            [error] = body["errors"]
            assert error["code"] == "UNAVAILABLE"
            assert error["message"].startswith(
                "the registry lost its tag lock in the metadata database (its connection to "
                "PostgreSQL "
            ), error
            assert error["message"].endswith("nothing was stored, try again"), error
        async with client.get(
            f"/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
        ) as resp:
            assert resp.status == 404

        # The client tries again: the lock is taken on a fresh connection, the push stored.
        async with client.put(
            f"/v2/{name}/manifests/{tag}", data=content, headers={"Content-Type": OCI_MANIFEST}
        ) as resp:
            assert resp.status == 201, await resp.text()
        async with client.get(
            f"/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST}
        ) as resp:
            assert resp.status == 200
            assert await resp.read() == content
