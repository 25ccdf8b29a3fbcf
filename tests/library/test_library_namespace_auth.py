"""With auth on, only ops (admin on the repository) may push into the library namespace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.auth.conftest import PASSWORDS, As, basic, write_accounts

PERMISSIONS = [
    {"namespace": "library/**", "groups": {"dev": "push"}},
    {"namespace": "apps/**", "groups": {"dev": "push"}},
    {"namespace": "**", "groups": {"ops": "admin"}},
]


async def test_only_ops_push_to_the_library(
    start_client: Any, data_dir: Path, policy_file: Path
) -> None:
    write_accounts(data_dir)
    client = await start_client(
        auth={"service": "trustyard-test", "permissions": PERMISSIONS},
        policy={"file": str(policy_file), "reload": False},
    )
    alice = As(client, basic("alice", PASSWORDS["alice"]))
    olga = As(client, basic("olga", PASSWORDS["olga"]))
    resp = await alice.post("/v2/library/python/blobs/uploads/")
    assert resp.status == 403
    assert "only ops" in (await resp.json())["errors"][0]["message"]
    assert (await alice.post("/v2/apps/web/blobs/uploads/")).status == 202
    assert (await olga.post("/v2/library/python/blobs/uploads/")).status == 202
