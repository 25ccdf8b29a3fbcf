"""A replicated Trustyard on loopback: replicas sharing one PostgreSQL and one S3, behind HAProxy.

Plain Python (no pytest), started by the fixtures of tests/ha:

    client ──> HAProxy 127.0.0.1:B (round-robin, GET /readyz health checks, admin socket)
                 ├──> replica r0 127.0.0.1:P0 ─┐
                 ├──> replica r1 127.0.0.1:P1 ─┼──> PostgreSQL (unix socket)  metadata
                 └──> replica r2 127.0.0.1:P2 ─┘    SeaweedFS S3 (127.0.0.1)  blobs, uploads

Every replica reads the same configuration file (metadata URL, S3 bucket and prefix, policy,
events) and has only its own local data directory; nothing but PostgreSQL and S3 is shared. A
replica can be killed (`kill -9`) and started again on its port, which HAProxy's configuration
names. HAProxy answers on its own port (retried on collision like every server the tests start),
and its admin socket says which replica serves a request in flight.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.server_process import RegistryProcess, free_port, start_registry

HAPROXY = "haproxy"
#: How long a replica may take to start: only turns a hang into a failure (on a busy 2-core
#: machine, importing boto3 alone has taken over 15 s while a storm and collections ran).
STARTUP_PATIENCE = 120.0


def haproxy_binary() -> str | None:
    """The `haproxy` executable (Debian's `haproxy`, `.ci/install-e2e-deps.sh`), or None."""
    return shutil.which(HAPROXY) or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )


def haproxy_config(port: int, replicas: dict[str, int], admin_socket: Path) -> str:
    """HAProxy's configuration: round-robin over the replicas, each checked on /readyz every
    300 ms and taken out after two failed checks (a check may take up to 5 s: on a busy machine
    a slow answer is not a dead replica); a request whose connection is refused goes to another
    replica (`retries` + `redispatch`). The replica that answered is named in
    `X-Trustyard-Replica`."""
    servers = "\n".join(
        f"    server {name} 127.0.0.1:{replica_port} check"
        for name, replica_port in replicas.items()
    )
    return f"""\
global
    maxconn 1024
    stats socket {admin_socket} mode 600 level admin

defaults
    mode http
    option httplog
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout http-request 30s
    retries 3
    option redispatch 1

frontend registry
    bind 127.0.0.1:{port}
    http-response set-header X-Trustyard-Replica %s
    default_backend trustyard

backend trustyard
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    timeout check 5s
    default-server inter 300ms fastinter 100ms downinter 300ms fall 2 rise 1
{servers}
"""


@dataclass
class Balancer:
    """A running HAProxy in front of the replicas."""

    port: int
    process: subprocess.Popen[bytes]
    folder: Path
    admin_socket: Path

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, as clients name the registry."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://{self.host}"

    def log(self) -> str:
        """What HAProxy printed so far."""
        return (self.folder / "haproxy.log").read_text(errors="replace")

    def admin(self, command: str) -> str:
        """One command on the admin socket, and its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.admin_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, dict[str, str]]:
        """`show stat` of the backend's servers: name -> columns (status, scur, ...)."""
        text = self.admin("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == "trustyard" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def stop(self) -> None:
        """Stop HAProxy by its PID."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_balancer(folder: Path, replicas: dict[str, int], timeout: float = 20.0) -> Balancer:
    """Start HAProxy in the foreground on a free port (another on collision) and wait until it
    sees every replica up."""
    binary = haproxy_binary()
    if binary is None:
        raise RuntimeError("HAProxy is not installed (bash .ci/install-e2e-deps.sh)")
    folder.mkdir(parents=True, exist_ok=True)
    admin_socket = folder / "admin.sock"
    for _attempt in range(5):
        port = free_port()
        config = folder / "haproxy.cfg"
        config.write_text(haproxy_config(port, replicas, admin_socket))
        with (folder / "haproxy.log").open("wb") as log:
            process = subprocess.Popen(
                [binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        balancer = Balancer(port, process, folder, admin_socket)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                if "cannot bind socket" in balancer.log():
                    break  # the port was taken meanwhile: another one
                raise RuntimeError(f"haproxy exited with {process.returncode}:\n{balancer.log()}")
            with contextlib.suppress(OSError, KeyError):
                states = {name: row["status"] for name, row in balancer.servers().items()}
                if states and all(state == "UP" for state in states.values()):
                    return balancer
            time.sleep(0.05)  # polling interval of the wait above
        else:
            balancer.stop()
            raise RuntimeError(f"haproxy did not see every replica up:\n{balancer.log()}")
        balancer.stop()
    raise RuntimeError("no free port for haproxy in five attempts")


@dataclass
class Cluster:
    """Replicas sharing a configuration (PostgreSQL metadata, S3 blobs), and their balancer."""

    folder: Path
    config_path: Path
    metadata_url: str
    replicas: dict[str, RegistryProcess]
    balancer: Balancer | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The balancer's URL: what clients use."""
        assert self.balancer is not None
        return self.balancer.url

    @property
    def host(self) -> str:
        """The balancer's `127.0.0.1:PORT`."""
        assert self.balancer is not None
        return self.balancer.host

    @property
    def env(self) -> dict[str, str]:
        """The environment of every Trustyard process of the cluster: its metadata database
        wins over any `TRUSTYARD_METADATA` a test's environment holds."""
        return {"TRUSTYARD_METADATA": self.metadata_url}

    def start_replica(self, name: str, port: int | None = None) -> RegistryProcess:
        """Start replica `name` (on `port`: again where the balancer expects it)."""
        replica = start_registry(
            self.folder / name / "data",
            extra_args=["--config", str(self.config_path)],
            env=self.env,
            port=port,
            timeout=STARTUP_PATIENCE,
        )
        self.replicas[name] = replica
        return replica

    def kill(self, name: str) -> None:
        """`kill -9` replica `name` and reap it."""
        replica = self.replicas[name]
        replica.process.send_signal(signal.SIGKILL)
        replica.process.wait()

    def restart(self, name: str) -> RegistryProcess:
        """Start the killed replica `name` again on its port; wait until the balancer sees it."""
        replica = self.start_replica(name, self.replicas[name].port)
        self.wait_balanced(name, "UP")
        return replica

    def wait_balanced(self, name: str, status: str, timeout: float = 20.0) -> None:
        """Until HAProxy's health checks report replica `name` in `status` (UP or DOWN)."""
        assert self.balancer is not None
        deadline = time.monotonic() + timeout
        while self.balancer.servers()[name]["status"].split()[0] != status:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not {status}: {self.balancer.servers()[name]}")
            time.sleep(0.02)  # polling interval of the wait above

    def stop(self) -> None:
        """Stop the balancer, then every replica (all at once: each finishes what it serves)."""
        if self.balancer is not None:
            self.balancer.stop()
        with ThreadPoolExecutor(max_workers=len(self.replicas) or 1) as pool:
            list(pool.map(lambda replica: replica.stop(), self.replicas.values()))


def start_cluster(
    folder: Path,
    *,
    metadata_url: str,
    storage: dict[str, Any],
    replicas: int = 3,
    settings: dict[str, Any] | None = None,
) -> Cluster:
    """Write the shared configuration, start `replicas` replicas one after the other (the first
    creates the schema), then HAProxy in front of them."""
    folder.mkdir(parents=True, exist_ok=True)
    document = {"metadata": metadata_url, "storage": storage, **(settings or {})}
    config_path = folder / "trustyard.yaml"
    config_path.write_text(json.dumps(document, indent=1))
    cluster = Cluster(folder, config_path, metadata_url, {}, settings=document)
    try:
        # The first creates the schema; the others start beside each other.
        cluster.start_replica("r0")
        with ThreadPoolExecutor(max_workers=max(replicas - 1, 1)) as pool:
            list(pool.map(cluster.start_replica, [f"r{index}" for index in range(1, replicas)]))
        cluster.replicas = dict(sorted(cluster.replicas.items()))
        ports = {name: replica.port for name, replica in cluster.replicas.items()}
        cluster.balancer = start_balancer(folder / "haproxy", ports)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET with urllib: (status, lower-cased headers, body); errors are answers too."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()
