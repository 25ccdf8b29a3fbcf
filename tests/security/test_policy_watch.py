"""The policy file watch reloads a replaced policy file whatever its new timestamp says.

A file restored from a backup (`cp -p`, `rsync -t`, `tar x`) carries its old, earlier
modification time; a configuration tool may rename a file of the same size and second into place.
Either is a new policy: an operator restoring the stricter policy from last week's backup must not
keep serving the looser one until the next restart, and nobody should have to `touch` the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from registry.context import CONTEXT
from tests.oci import push_image
from tests.security.test_trust_reload import eventually
from tests.signing import pull

#: Two policies of the same size: only what they match differs.
OPEN = """\
version: 1
rules:
  - name: nothing out
    match: {repositories: ["old/**"], on: [pull]}
    deny: frozen
"""
CLOSED = OPEN.replace("old/**", "app/**")
FROZEN = 'rule "nothing out": frozen'
HOUR_NS = 3600 * 10**9


def restore_in_place(path: Path, text: str) -> None:
    """Write `text` over the file (same inode, same size), then set its modification time an
    hour back, as `cp -p` from a backup does."""
    before = path.stat()
    with path.open("r+") as handle:
        handle.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns - HOUR_NS))


def restore_by_rename(path: Path, text: str) -> None:
    """Put a file dated an hour back in place by rename, as `rsync -t` does."""
    before = path.stat()
    staged = path.with_suffix(".restored")
    staged.write_text(text)
    os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns - HOUR_NS))
    staged.replace(path)


def replace_same_time_and_size(path: Path, text: str) -> None:
    """Put a file of the same size and modification time in place by rename (a new inode)."""
    before = path.stat()
    staged = path.with_suffix(".new")
    staged.write_text(text)
    os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns))
    staged.replace(path)


@pytest.mark.parametrize(
    "restore", [restore_in_place, restore_by_rename, replace_same_time_and_size]
)
async def test_a_policy_file_replaced_by_an_older_one_is_reloaded(
    start_client: Any, tmp_path: Path, restore: Any
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(OPEN)
    assert len(OPEN) == len(CLOSED)
    client = await start_client(policy={"file": str(path), "poll_interval": "0.05s"})
    gate = client.server.app[CONTEXT].policy
    await push_image(client, "app/web", "v1")
    assert await pull(client, "app/web", "v1") == (200, "")
    loaded = gate.policy.version

    before = path.stat()
    restore(path, CLOSED)
    after = path.stat()
    assert after.st_size == before.st_size
    assert after.st_mtime_ns <= before.st_mtime_ns  # never newer: only "different" tells

    async def reloaded() -> bool:
        return gate.policy.version != loaded

    await eventually(reloaded)
    assert await pull(client, "app/web", "v1") == (403, FROZEN)


async def test_a_policy_file_briefly_missing_is_reloaded_when_it_returns(
    start_client: Any, tmp_path: Path, caplog: Any
) -> None:
    """An editor or a deploy tool deletes the file and writes it again: while it is missing the
    policy in force stays (nothing is opened up), and the file that returns is loaded."""
    path = tmp_path / "policy.yaml"
    path.write_text(OPEN)
    client = await start_client(policy={"file": str(path), "poll_interval": "0.05s"})
    gate = client.server.app[CONTEXT].policy
    await push_image(client, "old/web", "v1")
    await push_image(client, "app/web", "v1")
    loaded = gate.policy.version
    caplog.set_level(logging.ERROR, logger="trustyard.policy")
    path.unlink()

    async def refused() -> bool:  # the watch saw the file go, and kept the policy in force
        return any("policy reload refused" in r.getMessage() for r in caplog.records)

    await eventually(refused)
    assert gate.policy.version == loaded
    assert await pull(client, "old/web", "v1") == (403, FROZEN)
    path.write_text(CLOSED)

    async def reloaded() -> bool:
        return gate.policy.version != loaded

    await eventually(reloaded)
    assert await pull(client, "app/web", "v1") == (403, FROZEN)
    assert await pull(client, "old/web", "v1") == (200, "")
