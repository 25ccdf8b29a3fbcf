"""Start the real Trustyard server as a subprocess on a free loopback port.

A port cannot be reserved for another process: between choosing a free one and the server
binding it, something else may take it. `start_registry` therefore waits for the server's own
"listening" line and, when the bind failed because the port was taken, starts again on another.
Servers the tests run in-process take a socket already bound (`reserve_port`), never a number.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (it may be taken by the time it
    is used: only for a process that is restarted on collision, as `start_registry` does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reserve_port() -> socket.socket:
    """A TCP socket bound to a free 127.0.0.1 port, not listening: connections to it are refused
    (a receiver that is down), nobody else can take the port, and a server started later takes
    the socket itself (`aiohttp.web.SockSite`). Close it when done."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def port_of(sock: socket.socket) -> int:
    """The port a socket is bound to."""
    return int(sock.getsockname()[1])


def listening_port(pid: int) -> int | None:
    """The TCP port process `pid` listens on, None while it listens on none (Linux: its socket
    descriptors matched against /proc/net/tcp). For a server started with `--listen HOST:0`
    whose "listening" line its log level filters out: the port is the system's choice, read
    from the process that holds it, never picked and freed beforehand."""
    try:
        links = [os.readlink(entry) for entry in Path(f"/proc/{pid}/fd").iterdir()]
    except (FileNotFoundError, ProcessLookupError):
        return None  # the process is gone (or going)
    inodes = {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)  # the header line
            for row in rows:
                fields = row.split()
                # local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 the inode.
                if fields[3] == "0A" and fields[9] in inodes:
                    return int(fields[1].rsplit(":", 1)[1], 16)
    return None


#: How long a server may take to answer after it is started: only turns a hang into a failure.
#: Generous: on a runner shared by parallel test runs Python's imports alone have taken 25 s,
#: and a start-up that merely took long is not what a test is about.
START_TIMEOUT = 120.0

#: What the server says when its port is taken ("cannot listen on …: the port is already in
#: use", or the errno text "Address already in use").
_PORT_TAKEN = ("already in use",)


@dataclass
class RegistryProcess:
    """A running `python -m registry serve` on 127.0.0.1."""

    data_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    scheme: str = "http"
    #: The PostgreSQL database the server uses (`TRUSTYARD_METADATA`), None for SQLite.
    metadata_url: str | None = None

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, as clients name the registry."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL, `http://127.0.0.1:PORT` (`https` when started with `--tls-cert`)."""
        return f"{self.scheme}://{self.host}"

    def command_env(self) -> dict[str, str]:
        """The environment for a `trustyard` command run on this server's data: the server's own
        metadata database (a server a module fixture started has the module's, not the test's)."""
        env = {k: v for k, v in os.environ.items() if k != "TRUSTYARD_METADATA"}
        if self.metadata_url is not None:
            env["TRUSTYARD_METADATA"] = self.metadata_url
        return env

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Stop the server with `sig` and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_registry(
    data_dir: Path,
    *,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
    timeout: float = START_TIMEOUT,
    cwd: Path | None = None,
) -> RegistryProcess:
    """Start the registry and wait until `GET /v2/` answers.

    Without `port`, a free one is chosen, and chosen again when the server finds it taken
    (another test's server got there first). With `port`, a collision is an error. `cwd` runs
    another tree's code (a benchmark's baseline). `timeout` bounds the wait, which ends as soon as
    the server answers: on a loaded machine (a load average of 20 on two cores) importing the
    package alone took more than 30 s, so the bound is generous and costs nothing when all is well.
    """
    for _attempt in range(5):
        server = _start_once(data_dir, extra_args, env, port or free_port(), timeout, cwd)
        if server is not None:
            return server
        if port is not None:
            raise RuntimeError(f"port {port} is already in use")
    raise RuntimeError("no free port found in five attempts")


def _start_once(
    data_dir: Path,
    extra_args: list[str] | None,
    env: dict[str, str] | None,
    port: int,
    timeout: float,
    cwd: Path | None = None,
) -> RegistryProcess | None:
    """The running server, or None when its port turned out to be taken."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"registry-{port}.log"
    args = [
        sys.executable,
        "-m",
        "registry",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
        *(extra_args or []),
    ]
    full_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd
        )
    scheme = "https" if "--tls-cert" in (extra_args or []) else "http"
    metadata_url = full_env.get("TRUSTYARD_METADATA")
    server = RegistryProcess(
        data_dir, port, process, log_path, list(extra_args or []), scheme, metadata_url
    )
    listening = f"listening on {scheme}://127.0.0.1:{port}"
    # The probe only asks whether the server answers: it need not trust a test certificate.
    probe_tls = ssl._create_unverified_context() if scheme == "https" else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = server.log()
            if any(taken in text.lower() for taken in _PORT_TAKEN):
                return None
            raise RuntimeError(f"registry exited with {process.returncode}:\n{text}")
        # Only our own process's "listening" line proves the port is ours: another server
        # answering /v2/ there would fool a probe alone.
        if listening in server.log():
            try:
                with urllib.request.urlopen(
                    f"{server.url}/v2/", timeout=1, context=probe_tls
                ) as resp:
                    if resp.status == 200:
                        return server
            except urllib.error.HTTPError as err:
                if err.code == 401:  # authentication is on: challenging is answering
                    return server
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
        time.sleep(0.05)  # polling interval of the wait above, not a synchronisation
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"registry did not answer within {timeout}s:\n{server.log()}")
