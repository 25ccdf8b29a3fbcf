"""Health probes, metrics, the access log and JSON logs with request ids."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from registry.context import CONTEXT
from registry.logs import REQUEST_ID_HEADER
from storage.gc import collect_garbage
from tests.auth.conftest import auth_section, write_accounts
from tests.oci import error_codes, push_image
from tests.operations.cli import ROOT, trustyard
from tests.server_process import START_TIMEOUT, listening_port, port_of, reserve_port

DENY_LATEST = """\
version: 1
rules:
  - name: no latest
    match: {repositories: ["**"], tags: ["latest"], on: [push]}
    deny: "use a version tag"
"""


async def test_probes_answer_without_credentials_when_auth_is_on(start_client, data_dir):
    write_accounts(data_dir)
    client = await start_client(auth=auth_section())
    assert (await client.get("/v2/")).status == 401
    health = await client.get("/healthz")
    assert health.status == 200
    assert await health.json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "blob_store": "ok", "policy": "ok"},
    }


async def test_readyz_fails_when_the_database_is_gone(client):
    await client.server.app[CONTEXT].db.close()
    ready = await client.get("/readyz")
    assert ready.status == 503
    body = await ready.json()
    assert body["status"] == "not ready"
    assert body["checks"]["database"].startswith("failed")
    assert body["checks"]["blob_store"] == "ok"
    assert (await client.get("/healthz")).status == 200


async def test_metrics_name_api_routes_and_count_decisions_and_gc(start_client, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(DENY_LATEST)
    client = await start_client(policy={"file": str(policy), "reload": False})
    await push_image(client, "app", "v1")
    await push_image_denied(client)  # pushes v2, then refuses it as latest
    await client.get("/api/v1/decisions")
    await client.get("/api/v1/images/app/v1/status")
    await client.get("/healthz")
    ctx = client.server.app[CONTEXT]
    before = time.time()
    for dry_run in (False, True, False):  # a dry run is not a collection
        await collect_garbage(
            ctx.db, ctx.store, grace_period=3600, stale_upload_age=3600, dry_run=dry_run
        )
    text = await (await client.get("/metrics")).text()
    assert (
        'trustyard_http_requests_total{method="GET",route="/api/v1/decisions",status="200"} 1'
        in text
    )
    assert 'route="/api/v1/images/{repository}/{reference}/status",status="200"} 1' in text, text
    assert 'route="/healthz",status="200"} 1' in text
    assert 'route="other"' not in text
    assert 'trustyard_policy_decisions_total{action="push",outcome="allow",rule=""} 2' in text, text
    assert (
        'trustyard_policy_decisions_total{action="push",outcome="deny",rule="no latest"} 1' in text
    ), text
    assert 'trustyard_event_deliveries{state="pending"} 0' in text
    assert "trustyard_event_delivery_failures_total 0" in text
    assert "trustyard_gc_runs_total 2" in text
    [last] = re.findall(r"^trustyard_gc_last_run_timestamp_seconds (\S+)$", text, re.M)
    assert before <= float(last) <= time.time()


async def push_image_denied(client) -> None:
    """Push a real image to `latest`: the policy refuses it with its rule."""
    _, body = await push_image(client, "app", "v2")
    resp = await client.put(
        "/v2/app/manifests/latest",
        data=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert resp.status == 403
    assert error_codes(await resp.json()) == ["DENIED"]


async def test_failed_deliveries_are_counted(start_client, request):
    # A port held bound but never listening: every delivery is refused for the whole test
    # (a port merely found free could be taken by another test's server meanwhile).
    dead_socket = reserve_port()
    request.addfinalizer(dead_socket.close)
    dead = f"http://127.0.0.1:{port_of(dead_socket)}/hook"
    client = await start_client(
        events={
            "endpoints": [{"name": "dead", "url": dead, "timeout": "1s"}],
            "retry": {"initial": "50ms", "max": "100ms"},
        }
    )
    await push_image(client, "app", "v1")
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        text = await (await client.get("/metrics")).text()
        if "trustyard_event_delivery_failures_total 0" not in text:
            break
        await _sleep(0.05)
    assert "trustyard_event_delivery_failures_total 0" not in text, text
    assert 'trustyard_event_deliveries{state="pending"} 0' not in text


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def _serve_and_get(tmp_path: Path, config_text: str, path: str) -> tuple[dict[str, str], str]:
    """Start the real server with `config_text`, GET `path`, stop it; (headers, its stderr)."""
    config = tmp_path / "trustyard.yaml"
    config.write_text(config_text)
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        # Port 0: the system chooses a free port as the server binds; it is read from the
        # process (its log level may filter the "listening" line out).
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "registry", "serve", "--config", str(config)),
                *("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")),
            ],
            stderr=log,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while (port := listening_port(process.pid)) is None:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)  # polling interval of the wait above, not a synchronisation
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", headers={REQUEST_ID_HEADER: "probe-1"}
        )
        try:
            # One request reaches the server: a slow first answer (a loaded machine, the
            # metadata pool opening) is waited for, never asked again (a second access line).
            with urllib.request.urlopen(request, timeout=60) as response:
                headers = dict(response.headers)
        except urllib.error.HTTPError as error:  # an answer all the same
            headers = dict(error.headers)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return headers, log_path.read_text()


def test_access_log_logs_even_at_log_level_warning(tmp_path):
    headers, log = _serve_and_get(tmp_path, "log_level: warning\naccess_log: true\n", "/healthz")
    assert headers[REQUEST_ID_HEADER] == "probe-1"
    access = [line for line in log.splitlines() if "trustyard.access" in line]
    assert len(access) == 1, log
    assert '"GET /healthz HTTP/1.1" 200' in access[0]
    assert " INFO " in access[0]
    assert "Trustyard listening" not in log  # info lines stay filtered at warning


def test_json_logs_carry_the_request_id_the_response_names(tmp_path):
    headers, log = _serve_and_get(
        tmp_path, "log_format: json\naccess_log: true\n", "/v2/missing/manifests/v1"
    )
    entries = [json.loads(line) for line in log.splitlines()]  # every line is one JSON object
    access = [e for e in entries if e["logger"] == "trustyard.access"]
    assert len(access) == 1
    assert access[0]["request_id"] == headers[REQUEST_ID_HEADER] == "probe-1"
    assert access[0]["status"] == 404
    assert access[0]["path"] == "/v2/missing/manifests/v1"
    assert {"time", "level", "message"} <= set(access[0])


def test_a_malformed_request_id_is_replaced(tmp_path):
    result = trustyard("--version")  # the command runs; ids are checked in process below
    assert result.returncode == 0
    from registry.logs import new_request_id

    assert new_request_id("ok-id_1.2") == "ok-id_1.2"
    replaced = new_request_id('bad" id\nx')
    assert len(replaced) == 32 and replaced.isalnum()
    assert new_request_id(None) != new_request_id(None)


def test_forked_workers_hand_out_ids_of_their_own() -> None:
    """`serve --workers` forks its workers: each must have its own prefix, else two workers
    answer two requests with the same id."""
    from registry.logs import new_request_id

    parent = new_request_id(None)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first id and leave at once
        os.write(write_end, new_request_id(None).encode())
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 100).decode()
    os.close(read_end)
    assert os.waitpid(pid, 0)[1] == 0
    assert len(child) == len(parent) == 32
    assert child[:16] != parent[:16]
