"""The real `python -m registry serve` process: shutdown, crashes mid-upload, `trustyard gc`."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.server_process import start_registry


def request(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def send_partial_upload(port: int, path: str, total: int, sent: bytes) -> socket.socket:
    """Open a request whose body is `total` bytes long but send only `sent`."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def blob_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]


def upload_bytes(data_dir: Path) -> int:
    """Bytes of uploads in progress on disk: above zero once the server is taking a body."""
    return sum(p.stat().st_size for p in (data_dir / "uploads").rglob("*") if p.is_file())


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_sigterm_lets_in_flight_requests_finish_and_closes_cleanly(tmp_path):
    server = start_registry(tmp_path / "data")
    data = os.urandom(2 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    sock = send_partial_upload(
        server.port, f"/v2/graceful/blobs/uploads/?digest={digest}", len(data), data[: 1 << 20]
    )
    wait_until(lambda: upload_bytes(server.data_dir) > 0, "the upload to be in flight")
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "stop signal: finishing 1 requests" in server.log(), "the stop signal")
    sock.sendall(data[1 << 20 :])
    reply = sock.recv(4096).decode()
    sock.close()
    assert reply.startswith("HTTP/1.1 201"), reply
    assert server.process.wait(timeout=20) == 0
    assert "database closed" in server.log()
    # The blob committed during shutdown is there after a restart.
    again = start_registry(tmp_path / "data")
    try:
        status, headers, _ = request(f"{again.url}/v2/graceful/blobs/{digest}", "HEAD")
        assert status == 200
        assert headers["Content-Length"] == str(len(data))
    finally:
        again.stop()


def test_kill_9_mid_upload_leaves_no_visible_or_corrupt_blob(tmp_path):
    data_dir = tmp_path / "data"
    server = start_registry(data_dir)
    data = os.urandom(8 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    sock = send_partial_upload(
        server.port, f"/v2/crash/blobs/uploads/?digest={digest}", len(data), data[: 5 << 20]
    )
    wait_until(lambda: upload_bytes(data_dir) > 0, "the upload to be in flight")
    server.stop(signal.SIGKILL)
    sock.close()
    assert blob_files(data_dir) == []

    again = start_registry(data_dir)
    try:
        status, _, _ = request(f"{again.url}/v2/crash/blobs/{digest}", "HEAD")
        assert status == 404
        status, _headers, _ = request(
            f"{again.url}/v2/crash/blobs/uploads/?digest={digest}", "POST", data
        )
        assert status == 201
        status, _, body = request(f"{again.url}/v2/crash/blobs/{digest}")
        assert status == 200 and body == data
    finally:
        again.stop()


def test_client_disconnect_mid_chunk_keeps_a_resumable_session(tmp_path):
    """A chunk the client cuts off leaves the session at its last acknowledged offset (the
    chunk's bytes that did arrive are cut back: only what was answered 202 counts), and the
    client resumes from the `Range` the server reports."""
    server = start_registry(tmp_path / "data")
    try:
        status, headers, _ = request(f"{server.url}/v2/resume/blobs/uploads/", "POST", b"")
        assert status == 202
        location = headers["Location"]
        data = os.urandom(3 << 20)
        first = 1 << 20
        req = urllib.request.Request(
            f"{server.url}{location}",
            method="PATCH",
            data=data[:first],
            headers={"Content-Range": f"0-{first - 1}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 202 and resp.headers["Range"] == f"0-{first - 1}"
        sock = socket.create_connection(("127.0.0.1", server.port))
        head = (
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data) - first}\r\n"
            f"Content-Range: {first}-{len(data) - 1}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        sock.sendall(head.encode() + data[first : first + (1 << 20) + 12345])
        wait_until(lambda: upload_bytes(server.data_dir) > first, "the chunk to be in flight")
        sock.close()
        wait_until(lambda: "request body interrupted" in server.log(), "the server to see the cut")
        status, headers, _ = request(f"{server.url}{location}")
        assert status == 204
        assert headers["Range"] == f"0-{first - 1}"
        assert upload_bytes(server.data_dir) == first
        req = urllib.request.Request(
            f"{server.url}{location}",
            method="PATCH",
            data=data[first:],
            headers={"Content-Range": f"{first}-{len(data) - 1}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 202
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, _, _ = request(f"{server.url}{location}?digest={digest}", "PUT", b"")
        assert status == 201
        status, _, body = request(f"{server.url}/v2/resume/blobs/{digest}")
        assert body == data
    finally:
        server.stop()


def test_gc_command_dry_run_then_real(tmp_path):
    data_dir = tmp_path / "data"
    server = start_registry(data_dir)
    loose = b"garbage"
    digest = "sha256:" + hashlib.sha256(loose).hexdigest()
    try:
        status, _, _ = request(f"{server.url}/v2/g/blobs/uploads/?digest={digest}", "POST", loose)
        assert status == 201
    finally:
        server.stop()
    gc = [
        sys.executable,
        "-m",
        "registry",
        "gc",
        "--data-dir",
        str(data_dir),
        "--grace-period",
        "0s",
    ]
    dry = subprocess.run([*gc, "--dry-run"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert f"would remove blob {digest}" in dry.stdout
    assert len(blob_files(data_dir)) == 1
    real = subprocess.run(gc, capture_output=True, text=True, timeout=60)
    assert real.returncode == 0, real.stderr
    assert f"removed blob {digest}" in real.stdout
    assert blob_files(data_dir) == []


def test_invalid_config_is_refused_with_every_problem(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("listen: 1\nstorage: {backend: floppy}\nunknown_key: true\n")
    result = subprocess.run(
        [sys.executable, "-m", "registry", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "storage.backend" in result.stderr
    assert "unknown_key" in result.stderr
    assert "listen" in result.stderr


def test_start_registry_moves_on_when_its_port_is_taken(tmp_path, monkeypatch):
    # Another process takes the chosen port first: the helper starts again on another port
    # instead of failing the test (or talking to the other process).
    import tests.server_process as server_process

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    taken = held.getsockname()[1]
    choices = iter([taken])
    real = server_process.free_port
    monkeypatch.setattr(server_process, "free_port", lambda: next(choices, None) or real())
    try:
        server = server_process.start_registry(tmp_path / "data")
        try:
            assert server.port != taken
            status, _, _ = request(f"{server.url}/v2/")
            assert status == 200
        finally:
            server.stop()
        assert "already in use" in (tmp_path / f"registry-{taken}.log").read_text()
    finally:
        held.close()
