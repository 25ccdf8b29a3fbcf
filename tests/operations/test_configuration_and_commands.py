"""Configuration errors, `policy check`, `user add` and `--json`, through the real command."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time

from tests.operations.cli import ROOT, one_line, trustyard


def test_config_errors_name_file_line_path_and_a_suggestion(tmp_path):
    config = tmp_path / "trustyard.yaml"
    config.write_text(
        "listen: 127.0.0.1:5000\n"
        "log_level: loud\n"
        "gc:\n"
        "  grace_priod: 1h\n"
        "uploads: {stale_after: soon}\n"
    )
    result = trustyard("gc", "--config", str(config), env={"TRUSTYARD_ACCESS_LOG": "maybe"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "trustyard: invalid configuration:"
    assert lines[1:] == [
        f'  {config}:2: log_level: expected one of debug, info, warning, error, got "loud"',
        f"  {config}:4: gc.grace_priod: unknown key; did you mean grace_period?",
        f"  {config}:5: uploads.stale_after: expected seconds as a number, or a string such as "
        '90s, 15m, 1h, 7d; got "soon"',
        '  TRUSTYARD_ACCESS_LOG: access_log: expected boolean, got "maybe"',
    ]


def test_a_yaml_error_names_its_line(tmp_path):
    config = tmp_path / "trustyard.yaml"
    config.write_text("listen: 127.0.0.1:5000\ngc: {grace_period: 1h\n")
    result = trustyard("gc", "--config", str(config))
    assert result.returncode == 2
    assert one_line(result).startswith(f"trustyard: {config}:3: not valid YAML")


def test_relative_paths_in_the_config_file_are_read_from_its_folder(tmp_path):
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "trustyard.yaml").write_text("data_dir: data\npolicy: {file: policy.yaml}\n")
    (folder / "policy.yaml").write_text("version: 1\nrules: []\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Run from another folder: the data dir must be etc/data, not elsewhere/data.
    result = trustyard("decisions", "--config", str(folder / "trustyard.yaml"), cwd=elsewhere)
    assert result.returncode == 2
    assert f"data directory {folder / 'data'} does not exist" in one_line(result)
    # A --data-dir flag stays relative to the working directory.
    flagged = trustyard(
        "decisions", "--config", str(folder / "trustyard.yaml"), "--data-dir", "d", cwd=elsewhere
    )
    assert "data directory d does not exist" in one_line(flagged)


BAD_POLICY = """\
version: 1
trust:
  keys:
    team: {pem_file: missing.pub}
rules:
  - name: one
    match: {repositories: ["**"], on: [push]}
    require: {tag_pattern: "([a-z"}
  - name: one
    match: {repositories: ["**"], on: [push]}
  - name: two
    match: {repositories: ["**"], on: [push], colour: red}
    require: {labels: {a: "*x"}}
  - name: signed
    match: {repositories: ["**"], on: [pull]}
    require: {signature: {any_of: [team]}}
"""


def test_policy_check_reports_every_problem_at_once(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(BAD_POLICY)
    result = trustyard("policy", "check", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}:4: trust.keys.team: cannot read {tmp_path / 'missing.pub'}: No such file or "
        "directory",
        f"{path}:8: rules[0].require.tag_pattern: not a valid regular expression: unterminated "
        "character set at position 1",
        f"{path}:9: rules[1]: a rule needs require: or deny:",
        f'{path}:9: rules[1].name: duplicate rule name "one" (first at rules[0])',
        f"{path}:12: rules[2].match.colour: unknown key; expected one of: repositories, tags, on, "
        "exclude",
        f"{path}:13: rules[2].require.labels.a: not a valid regular expression: nothing to "
        "repeat at position 0",
        f"{path}: invalid (6 problems)",
    ]
    # The missing key file is the only problem of the signed rule: no "unknown signer".
    assert "unknown signer" not in result.stderr


def test_policy_check_json(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(BAD_POLICY)
    bad = trustyard("policy", "check", "--json", str(path))
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["valid"] is False
    assert len(report["problems"]) == 6
    assert report["problems"][1] == {
        "line": 8,
        "path": "rules[0].require.tag_pattern",
        "message": "not a valid regular expression: unterminated character set at position 1",
    }
    path.write_text(
        "version: 1\nrules:\n  - name: no latest\n"
        '    match: {repositories: ["**"], tags: [latest], on: [push]}\n    deny: no\n'
    )
    good = trustyard("policy", "check", "--json", str(path))
    assert good.returncode == 0, good.stderr
    report = json.loads(good.stdout)
    assert report["valid"] is True
    assert report["rules"] == [{"name": "no latest", "line": 3, "on": ["push"], "mode": "enforce"}]


def test_user_add_refuses_a_short_password_in_one_line(tmp_path):
    result = trustyard(
        "user", "add", "carol", "--password-stdin", "--data-dir", str(tmp_path), input="x\n"
    )
    assert result.returncode == 2
    assert one_line(result) == (
        "trustyard: password too short: use at least 8 characters; nothing was changed"
    )
    assert not (tmp_path / "auth" / "users.yaml").exists()


def test_user_add_on_a_terminal_says_once_that_the_passwords_differ(tmp_path):
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "registry", "user", "add", "carol", "--data-dir", str(tmp_path)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=ROOT,
        start_new_session=True,  # no controlling terminal: getpass reads the pty on stdin
    )
    os.close(terminal)
    output = b""

    def read_until(text: bytes) -> None:
        nonlocal output
        deadline = time.monotonic() + 30
        while text not in output and time.monotonic() < deadline:
            try:
                output += os.read(controller, 1024)
            except OSError:
                break

    read_until(b"password: ")
    os.write(controller, b"first-password\n")
    read_until(b"again: ")
    os.write(controller, b"other-password\n")
    assert process.wait(timeout=30) == 2
    read_until(b"nothing was changed")
    os.close(controller)
    text = output.decode(errors="replace")
    assert text.count("trustyard:") == 1, text
    assert "trustyard: the two passwords differ; nothing was changed" in text
    assert not (tmp_path / "auth" / "users.yaml").exists()


def test_user_add_with_a_good_password(tmp_path):
    result = trustyard(
        "user",
        "add",
        "carol",
        "--password-stdin",
        "--data-dir",
        str(tmp_path / "data"),
        input="correct horse battery\n",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "auth" / "users.yaml").is_file()
    assert f"created the data directory {tmp_path / 'data'}" in result.stderr


def test_gc_prints_each_line_once(tmp_path):
    data = tmp_path / "data"
    from tests.server_process import start_registry

    server = start_registry(data)
    server.stop()
    result = trustyard("gc", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    summary = "0 manifests, 0 blobs (0 bytes), 0 uploads"
    assert summary in result.stdout
    assert summary not in result.stderr


def test_policy_explain_json(tmp_path):
    from tests.policies.test_commands import GOOD  # a policy with a pull rule on app/**
    from tests.server_process import start_registry

    data = tmp_path / "data"
    server = start_registry(data)
    try:
        import hashlib
        import urllib.request

        def put(path: str, body: bytes, content_type: str) -> None:
            request = urllib.request.Request(
                f"{server.url}{path}",
                data=body,
                method="PUT",
                headers={"Content-Type": content_type},
            )
            urllib.request.urlopen(request, timeout=10).close()

        def post_blob(data_bytes: bytes) -> str:
            digest = "sha256:" + hashlib.sha256(data_bytes).hexdigest()
            request = urllib.request.Request(
                f"{server.url}/v2/app/web/blobs/uploads/?digest={digest}",
                data=data_bytes,
                method="POST",
            )
            urllib.request.urlopen(request, timeout=10).close()
            return digest

        config = post_blob(b"{}")
        layer = post_blob(b"layer")
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config,
                    "size": 2,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer,
                        "size": 5,
                    }
                ],
            }
        ).encode()
        put("/v2/app/web/manifests/v1", manifest, "application/vnd.oci.image.manifest.v1+json")
    finally:
        server.stop()
    policy = tmp_path / "policy.yaml"
    policy.write_text(GOOD)
    result = trustyard(
        "policy", "explain", "--json", str(policy), "app/web:v1", "--data-dir", str(data)
    )
    assert result.returncode == 1, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["outcome"] == "deny"
    assert verdict["repository"] == "app/web"
    assert [r["rule"] for r in verdict["rules"]] == ["reviewed before pull"]
    assert verdict["rules"][0]["outcome"] == "deny"
