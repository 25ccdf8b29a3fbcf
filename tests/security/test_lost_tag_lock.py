"""A push to a declared library tag (the pushes that hold the tag's lock in the database from
their check to their commit; others re-check the tag in their transaction instead) whose tag
lock in PostgreSQL was lost between the policy check and the commit is
refused with 503 and the reason, and nothing is stored: the gate asks the lock's connection
just before the commit whether it still holds the tag.

The same attack as `tests/replicas/test_lost_lock.py` (which drives a replica process), here
against a registry running in the test's process, so that the gate's own part of it (which
tags of a change it confirms) is seen by the in-process tests that judge the gate. The push is
held between taking the lock and its commit by holding the `tags` table (its immutability check
reads the tag) while the test ends the lock's backend with `pg_terminate_backend`; PostgreSQL
drops a session advisory lock with its connection and tells nobody.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.metadata.coordination import tag_key
from tests.oci import OCI_MANIFEST
from tests.replicas.images import LIBRARY_RELEASES, image_manifest
from tests.replicas.locks import lose_tag_lock_during

#: Only turns a hang into a failure.
PATIENCE = 60.0


async def test_a_push_whose_tag_lock_was_lost_is_refused_not_committed(
    start_client: Any, registry_postgres_url: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(LIBRARY_RELEASES)
    client = await start_client(
        metadata=registry_postgres_url, policy={"file": str(policy), "reload": False}
    )
    name, tag = "library/base", "v1"
    content = await image_manifest(client, name, 1, "lost-lock")
    push = await lose_tag_lock_during(
        registry_postgres_url,
        tag_key(name, tag),
        lambda: client.put(
            f"/v2/{name}/manifests/{tag}", data=content, headers={"Content-Type": OCI_MANIFEST}
        ),
        PATIENCE,
    )
    resp = await push
    assert resp.status == 503, await resp.text()
    [error] = (await resp.json())["errors"]
    assert error["code"] == "UNAVAILABLE"
    assert error["message"].startswith(
        "the registry lost its tag lock in the metadata database (its connection to PostgreSQL "
    ), error
    assert error["message"].endswith("nothing was stored, try again"), error
    assert error["detail"]["reason"].startswith("tag lock lost: "), error
    resp = await client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 404

    # Tried again, the lock is taken on a fresh connection and the push stored.
    resp = await client.put(
        f"/v2/{name}/manifests/{tag}", data=content, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201, await resp.text()
    resp = await client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 200
    assert await resp.read() == content


async def test_without_a_policy_pushes_and_deletes_by_tag_confirm_no_lock(
    start_client: Any, registry_postgres_url: str
) -> None:
    """No policy, no tag lock taken (nothing to decide one after the other): a push or delete by
    tag must not ask PostgreSQL to confirm a lock it never took (it would answer "not held" and
    refuse every change with 503)."""
    client = await start_client(metadata=registry_postgres_url)
    name = "team/open"
    content = await image_manifest(client, name, 1, "no-policy")
    resp = await client.put(
        f"/v2/{name}/manifests/v1", data=content, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201, await resp.text()
    resp = await client.delete(f"/v2/{name}/manifests/v1")
    assert resp.status == 202, await resp.text()
    resp = await client.get(f"/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 404
