"""`trustyard policy check`, `policy explain`, `decisions`, and `serve --policy` with SIGHUP."""

from __future__ import annotations

import argparse
import io
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from policies.decisions import Action
from registry.cli import _parser, main
from registry.policy_commands import check_policy, explain, show_decisions, split_image
from tests.conftest import make_config
from tests.oci import push_image
from tests.server_process import RegistryProcess, start_registry

GOOD = """\
version: 1
rules:
  - name: release tags are immutable
    match: {repositories: ["**"], tags: ["v*"], on: [push]}
    require: {immutable_tags: true}
  - name: reviewed before pull
    match: {repositories: ["app/**"], on: [pull]}
    require: {annotations: {com.example.reviewed: "^yes$"}}
"""


def decisions_args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["decisions", *argv])


def test_check_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    assert main(["policy", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: valid, 2 rules, mode enforce, version sha256:" in out
    assert "line 3: 'release tags are immutable' on push in ** tags v*" in out


def test_check_invalid_lists_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD.replace("immutable_tags: true", "immutable_tags: 1, colour: red"))
    assert main(["policy", "check", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}:5: rules[0].require.colour: unknown key; expected one of: immutable_tags, "
        "tag_pattern, labels, annotations, platforms, media_types, max_size, base_image, "
        "signature, vulnerabilities",
        f"{path}:5: rules[0].require.immutable_tags: expected boolean, got 1",
        f"{path}: invalid (2 problems)",
    ]


def test_check_unreadable(tmp_path: Path) -> None:
    assert check_policy(tmp_path / "nope.yaml", io.StringIO()) == 1


def test_split_image() -> None:
    assert split_image("app/web:v1") == ("app/web", "v1")
    digest = "sha256:" + "a" * 64
    assert split_image(f"app/web@{digest}") == ("app/web", digest)
    with pytest.raises(ValueError):
        split_image("app/web")


async def test_explain_and_decisions(
    start_client: Any, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    client = await start_client(policy={"file": str(path), "reload": False})
    digest, _ = await push_image(client, "app/web", "v1")
    assert (await client.get("/v2/app/web/manifests/v1")).status == 403
    await client.close()
    config = make_config(data_dir)
    out = io.StringIO()
    assert await explain(config, path, "app/web:v1", Action.PULL, out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"policy {path} (sha256:")
    assert lines[0].endswith(f"pull app/web v1 ({digest[:19]}…)")
    assert lines[1] == (
        "  DENIES  rule 'reviewed before pull' (line 6, enforce): manifest annotation "
        "com.example.reviewed missing"
    )
    assert lines[2] == "outcome: deny (quarantined: stored but not pullable)"
    out = io.StringIO()
    assert await explain(config, path, f"app/web@{digest}", Action.PUSH, out) == 0
    assert "no rule matches; default: allow (a request no rule matches is allowed" in out.getvalue()
    out = io.StringIO()
    assert await show_decisions(config, decisions_args("--outcome", "deny"), out) == 0
    printed = out.getvalue().splitlines()
    assert len(printed) == 1
    assert ' deny  pull   app/web:v1 anonymous: rule "reviewed before pull"' in printed[0]
    out = io.StringIO()
    assert await show_decisions(config, decisions_args("--json", "-n", "1"), out) == 0
    row = json.loads(out.getvalue())
    assert row["outcome"] == "deny"


def test_serve_refuses_an_invalid_policy(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nrules: [{name: x}]\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "registry",
            "serve",
            "--policy",
            str(path),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "invalid policy, not starting" in proc.stderr
    assert f"{path}:2: rules[0]: missing required key match" in proc.stderr


def _put(url: str, body: bytes, content_type: str) -> int:
    request = urllib.request.Request(url, data=body, method="PUT")
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _wait_for_log(server: RegistryProcess, text: str, timeout: float = 30.0) -> None:
    """Wait (polling, with a timeout) until the server's log says `text`: the signal's effect,
    not a time it usually takes."""
    deadline = time.monotonic() + timeout
    while text not in server.log():
        assert time.monotonic() < deadline, f"no {text!r} in {timeout}s:\n{server.log()}"
        time.sleep(0.05)  # polling interval of the wait above


def test_sighup_reloads_and_a_bad_file_keeps_the_last_good_policy(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nrules: []\n")
    server = start_registry(
        tmp_path / "data",
        extra_args=["--policy", str(path)],
        env={"TRUSTYARD_POLICY__RELOAD": "false"},
    )
    try:
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [],
            }
        ).encode()
        index = "application/vnd.oci.image.index.v1+json"
        assert _put(f"{server.url}/v2/a/manifests/one", manifest, index) == 201
        path.write_text(
            "version: 1\nrules:\n  - name: frozen\n    match: {repositories: ['**'], on: [push]}\n"
            "    deny: frozen\n"
        )
        server.process.send_signal(signal.SIGHUP)
        _wait_for_log(server, "reloaded")
        assert _put(f"{server.url}/v2/a/manifests/two", manifest, index) == 403
        path.write_text("version: [")
        server.process.send_signal(signal.SIGHUP)
        _wait_for_log(server, "reload refused")
        assert "keeping version sha256:" in server.log()
        assert _put(f"{server.url}/v2/a/manifests/three", manifest, index) == 403
    finally:
        assert server.stop() == 0
    assert "NO POLICY" not in server.log()
