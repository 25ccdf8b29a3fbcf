"""Replicas read the policy and the users file from their own disks; they must be the same on
every replica. A replica that would run another policy than a live one refuses to start, saying
which file differs from whose; a difference appearing while they serve (a file changed on one
replica only) is logged as an error by both, until it is over. On both backends.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
import yaml

from registry.auth.tokens import load_or_create_key
from registry.auth.users import UserStore
from tests.auth.conftest import auth_section
from tests.replicas.conftest import StartReplicas
from tests.server_process import START_TIMEOUT, RegistryProcess, start_registry

STRICT = """\
version: 1
default: allow
rules:
  - name: release tags are immutable
    match: {repositories: ["**"], tags: ["v*"], on: [push]}
    require: {immutable_tags: true}
"""
#: The same rules, one tag pattern wider: a different policy.
OTHER = STRICT.replace('tags: ["v*"]', 'tags: ["v*", "r*"]')

#: How long a server may take to start on a loaded machine.
START = START_TIMEOUT
#: Only turns a hang into a failure; a difference is seen within two heartbeats.
PATIENCE = 60.0


def policy_file(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "policy.yaml"
    path.write_text(text)
    return path


def until_logged(server: RegistryProcess, pattern: str, after: int = 0) -> str:
    """Wait until the server's log (from byte `after`) has a line matching `pattern`."""
    deadline = time.monotonic() + PATIENCE
    while True:
        text = server.log()[after:]
        found = re.search(pattern, text)
        if found:
            return found.group(0)
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n{text[-3000:]}"
        time.sleep(0.1)


def test_a_replica_with_another_policy_refuses_to_start(
    start_replicas: StartReplicas, tmp_path: Path
) -> None:
    a = start_replicas("--policy", str(policy_file(tmp_path / "a", STRICT)), count=1).a
    data = tmp_path / "data"
    with pytest.raises(RuntimeError) as refused:
        start_registry(
            data, extra_args=["--policy", str(policy_file(tmp_path / "b", OTHER))], timeout=START
        )
    message = str(refused.value)
    assert message.startswith("registry exited with 2:"), message
    host = socket.gethostname()
    assert re.search(
        rf"trustyard: not starting: the policy file differs from replica "
        rf"'{re.escape(host)} {a.process.pid}''s: it runs sha256:[0-9a-f]{{12}}, this one "
        rf"sha256:[0-9a-f]{{12}}\. Every replica must read the same policy and users file",
        message,
    ), message

    # The same policy in another file is the same policy: it joins.
    b = start_registry(
        data, extra_args=["--policy", str(policy_file(tmp_path / "c", STRICT))], timeout=START
    )
    b.stop()
    # Once the replica with the other policy stopped, nobody disagrees: it starts.
    assert a.stop() == 0
    c = start_registry(
        data, extra_args=["--policy", str(policy_file(tmp_path / "b", OTHER))], timeout=START
    )
    c.stop()


def test_a_policy_changed_on_one_replica_only_is_reported_by_both(
    start_replicas: StartReplicas, tmp_path: Path
) -> None:
    first = start_replicas("--policy", str(policy_file(tmp_path / "a", STRICT)), count=1).a
    own = policy_file(tmp_path / "b", STRICT)
    second = start_registry(tmp_path / "data", extra_args=["--policy", str(own)], timeout=START)
    try:
        marks = (len(first.log()), len(second.log()))
        own.write_text(OTHER)  # the second replica reloads it; the first keeps its own
        until_logged(second, r"policy \S+ reloaded", marks[1])
        started = time.monotonic()
        for server, other, mark in ((first, second, marks[0]), (second, first, marks[1])):
            line = until_logged(
                server,
                rf"ERROR .*replicas disagree: the policy file differs from replica "
                rf"'[^']* {other.process.pid}''s",
                mark,
            )
            assert "change them in place on every replica" in server.log()[mark:], line
        assert time.monotonic() - started < PATIENCE
        # Put back: both say they agree again.
        marks = (len(first.log()), len(second.log()))
        own.write_text(STRICT)
        for server, mark in ((first, marks[0]), (second, marks[1])):
            until_logged(server, r"replicas agree again on the policy and users files", mark)
    finally:
        second.stop()


def auth_config(folder: Path, users: list[str]) -> Path:
    """A configuration with auth on, its own users file holding `users`, one shared key."""
    folder.mkdir(parents=True, exist_ok=True)
    store = UserStore(folder / "users.yaml")
    for name in users:
        store.add_robot(name, ["ci"], replace=False)
    key = folder.parent / "signing.pem"
    if not key.exists():
        load_or_create_key(key, configured=False)
    config = folder / "trustyard.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "auth": {
                    **auth_section(),
                    "users_file": str(folder / "users.yaml"),
                    "token": {"signing_key": str(key)},
                }
            }
        )
    )
    return config


def test_a_replica_with_another_users_file_refuses_to_start(
    start_replicas: StartReplicas, tmp_path: Path
) -> None:
    """A robot removed from one replica's users file only would still push through the others:
    a replica whose users file differs from a live replica's does not start."""
    a = start_replicas("--config", str(auth_config(tmp_path / "a", ["ci", "deploy"])), count=1).a
    with pytest.raises(RuntimeError) as refused:
        start_registry(
            tmp_path / "data",
            extra_args=["--config", str(auth_config(tmp_path / "b", ["ci"]))],
            timeout=START,
        )
    message = str(refused.value)
    assert message.startswith("registry exited with 2:"), message
    assert re.search(
        rf"trustyard: not starting: the users file differs from replica "
        rf"'[^']* {a.process.pid}''s: it runs sha256:[0-9a-f]{{12}}, this one sha256:",
        message,
    ), message
    assert "the policy file differs" not in message
