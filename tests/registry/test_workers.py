"""`trustyard serve --workers N`: the real parent and its worker processes on one port."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from registry.cli import bind
from registry.workers import Supervisor, WorkerRole, bind_slots
from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor
from tests.server_process import RegistryProcess, start_registry

WORKER = re.compile(r'trustyard_worker_info\{worker="(\d+)",workers="(\d+)"\}')


def request(
    url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None
) -> tuple[int, bytes]:
    """One request on a fresh connection (urllib opens one per request): the kernel picks a
    worker for each."""
    req = urllib.request.Request(url, method=method, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling interval, not a synchronisation


def worker_of(url: str) -> int:
    status, body = request(f"{url}/metrics")
    assert status == 200, body
    found = WORKER.search(body.decode())
    assert found is not None, "no trustyard_worker_info in /metrics"
    assert found.group(2) == "2"
    return int(found.group(1))


def workers_answering(url: str, requests: int = 48) -> set[int]:
    with ThreadPoolExecutor(8) as pool:
        return set(pool.map(lambda _: worker_of(url), range(requests)))


def worker_pids(server: RegistryProcess) -> dict[int, int]:
    """Slot -> pid of the workers the parent reported ready most recently."""
    pids: dict[int, int] = {}
    for slot, pid in re.findall(r"worker (\d+) \(pid (\d+)\) ready", server.log()):
        pids[int(slot)] = int(pid)
    return pids


def children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def push_image(url: str, name: str, tag: str) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    layer = f"layer of {name}:{tag}".encode()
    for blob in (config, layer):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        status, body = request(f"{url}/v2/{name}/blobs/uploads/?digest={digest}", "POST", data=blob)
        assert status == 201, body
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, layer)],
        }
    ).encode()
    status, body = request(
        f"{url}/v2/{name}/manifests/{tag}",
        "PUT",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert status == 201, body
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def get_manifest(url: str, name: str, tag: str) -> int:
    status, _ = request(f"{url}/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    return status


@pytest.fixture
def workers(tmp_path: Path):
    server = start_registry(tmp_path / "data", extra_args=["--workers", "2"])
    try:
        wait_until(lambda: len(worker_pids(server)) == 2, "both workers ready")
        yield server
    finally:
        server.stop(signal.SIGKILL)
        # The workers follow their parent down (the lifeline pipe): none is left behind.
        for pid in worker_pids(server).values():
            wait_until(lambda p=pid: not Path(f"/proc/{p}").exists(), f"worker {pid} gone")


def test_both_workers_serve_pushes_and_pulls_at_once(workers: RegistryProcess) -> None:
    assert "Trustyard listening on http://127.0.0.1:" in workers.log()
    assert "with 2 workers" in workers.log()
    assert set(worker_pids(workers).values()) == children(workers.process.pid)
    assert workers_answering(workers.url) == {0, 1}
    with ThreadPoolExecutor(8) as pool:
        pushed = list(
            pool.map(lambda i: push_image(workers.url, f"team/app{i % 4}", f"v{i}"), range(24))
        )
    assert len(set(pushed)) == 24
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(
                lambda i: get_manifest(workers.url, f"team/app{i % 4}", f"v{i % 24}"), range(96)
            )
        )
    assert statuses == [200] * 96


def test_a_killed_worker_is_started_again_and_requests_keep_succeeding(
    workers: RegistryProcess,
) -> None:
    push_image(workers.url, "team/app", "v1")
    before = worker_pids(workers)
    os.kill(before[1], signal.SIGKILL)
    # Requests during the outage: connections the kernel gives the dead worker's slot wait in
    # its backlog (the parent keeps the socket open) until the new worker accepts them.
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: get_manifest(workers.url, "team/app", "v1"), range(64)))
    assert statuses == [200] * 64
    wait_until(
        lambda: worker_pids(workers).get(1) not in (None, before[1]), "worker 1 started again"
    )
    assert re.search(
        rf"worker 1 \(pid {before[1]}\) killed by signal 9: starting it again", workers.log()
    )
    after = worker_pids(workers)
    assert after[0] == before[0]  # the other worker was left alone
    assert set(after.values()) == children(workers.process.pid)
    assert workers_answering(workers.url) == {0, 1}
    assert get_manifest(workers.url, "team/app", "v1") == 200


def test_sigterm_stops_every_worker_cleanly(workers: RegistryProcess) -> None:
    push_image(workers.url, "team/app", "v1")
    pids = worker_pids(workers)
    assert workers.stop(signal.SIGTERM, timeout=60) == 0
    log = workers.log()
    for slot, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists()
        assert f"worker {slot} (pid {pid}) exited with 0" in log
        assert f"worker {slot} stopped" in log
    assert "Trustyard stopped" in log
    assert "Traceback" not in log


def test_workers_that_cannot_start_stop_the_supervisor_with_an_error(caplog) -> None:
    # The supervisor itself, forking real workers that fail before they are ready (as one
    # whose database cannot be opened does): all are stopped and the status is not 0.
    slots = bind_slots(lambda port: bind("127.0.0.1", port, reuse_port=True), 0, 2)

    def failing(_sock: socket.socket, role: WorkerRole) -> int:
        if role.index == 0:
            role.report_ready()
            signal.pause()  # until the supervisor stops it
        return 3

    supervisor = Supervisor(slots, failing, start_timeout=30, stop_timeout=30)
    with caplog.at_level(logging.INFO, logger="trustyard.workers"):
        assert supervisor.run() == 1
    assert "worker 1 (pid" in caplog.text
    assert "exited with 3 before it was ready: stopping the registry" in caplog.text
    assert all(slot.pid == 0 for slot in supervisor.slots)


def test_a_worker_that_never_gets_ready_stops_the_supervisor(caplog) -> None:
    slots = bind_slots(lambda port: bind("127.0.0.1", port, reuse_port=True), 0, 2)

    def stuck(_sock: socket.socket, role: WorkerRole) -> int:
        if role.index == 0:
            role.report_ready()
        signal.pause()
        return 0

    supervisor = Supervisor(slots, stuck, start_timeout=1.0, stop_timeout=30)
    with caplog.at_level(logging.INFO, logger="trustyard.workers"):
        assert supervisor.run() == 1
    assert "workers not ready after 1s: stopping" in caplog.text


def test_workers_is_a_positive_count(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "registry", "serve", "--data-dir", str(tmp_path), "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "workers: 0 is less than the minimum of 1" in result.stderr


def test_an_immutable_tag_raced_across_workers_is_created_once(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nmode: enforce\nrules:\n"
        "  - name: releases are immutable\n"
        "    match: {repositories: ['team/**'], on: [push]}\n"
        "    require: {immutable_tags: true}\n"
    )
    server = start_registry(
        tmp_path / "data", extra_args=["--workers", "2", "--policy", str(policy)]
    )
    try:
        wait_until(lambda: len(worker_pids(server)) == 2, "both workers ready")
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        layer = b"raced layer"
        for blob in (config, layer):
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            status, _ = request(
                f"{server.url}/v2/team/app/blobs/uploads/?digest={digest}", "POST", data=blob
            )
            assert status == 201

        def put(n: int) -> tuple[int, bytes]:
            body = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": descriptor(OCI_CONFIG, config),
                    "layers": [descriptor(OCI_LAYER, layer)],
                    "annotations": {"n": str(n)},
                }
            ).encode()
            return request(
                f"{server.url}/v2/team/app/manifests/v1",
                "PUT",
                data=body,
                headers={"Content-Type": OCI_MANIFEST},
            )

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(put, range(16)))
        statuses = sorted(status for status, _ in answers)
        assert statuses == [201] + [403] * 15, answers
        for status, body in answers:
            if status == 403:
                assert json.loads(body)["errors"][0]["code"] == "DENIED"
                assert b"immutable" in body
    finally:
        server.stop()
