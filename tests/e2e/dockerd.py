"""A private dockerd: started for the e2e `dockerd` fixture and for the benchmark's `docker pull`.

Plain Python (no pytest), so that both tests/e2e/conftest.py and bench/registry_bench.py use it.
Own data root, exec root and unix socket under a short temporary directory (unix socket paths
must stay under ~100 bytes); no iptables, no bridge; its own containerd (under the exec root)
in a separate namespace. Stopped by PID (dockerd, then anything it left behind) and its
directory removed by `PrivateDockerd.stop()`.
Docker treats 127.0.0.0/8 as an insecure registry, so it pulls over plain HTTP from loopback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DOCKERD = "/usr/sbin/dockerd"
#: Prefer the CLI that ships with the daemon (Debian's docker.io); any newer CLI also works.
DOCKER = "/usr/bin/docker"


def docker_available() -> tuple[str, str] | None:
    """(dockerd, docker client) when both and containerd are installed, else None."""
    dockerd = DOCKERD if os.access(DOCKERD, os.X_OK) else shutil.which("dockerd")
    client = DOCKER if os.access(DOCKER, os.X_OK) else shutil.which("docker")
    if not dockerd or not client or not shutil.which("containerd"):
        return None
    return dockerd, client


def xdist_worker() -> str:
    """The pytest-xdist worker's name (`gw0`, ...) or "": each worker starts its own daemons,
    and their containerd namespaces must not meet."""
    return os.environ.get("PYTEST_XDIST_WORKER", "")


def _children_of(pid: int) -> list[int]:
    """PIDs of the direct children of `pid`, read from /proc."""
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name may contain spaces and parentheses: split after the last ')'.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM `pid`, wait for it, then SIGKILL it if it is still there."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not _alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)


@dataclass
class PrivateDockerd:
    """A running private dockerd and the environment its docker CLI needs."""

    process: subprocess.Popen[bytes]
    root: Path
    client: str
    env: dict[str, str]
    storage_driver: str

    @property
    def pid(self) -> int:
        """dockerd's PID."""
        return self.process.pid

    def docker(self, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this daemon (never raises on a non-zero exit)."""
        return subprocess.run(
            [self.client, *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def log_tail(self, lines: int = 50) -> str:
        """The last `lines` lines dockerd logged."""
        try:
            text = (self.root / "dockerd.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop dockerd, then containerd and its shims should dockerd have left them; remove
        the directory."""
        descendants = _children_of(self.process.pid)
        for child in list(descendants):  # bounded: two levels (containerd, its shims)
            descendants.extend(_children_of(child))
        stop_pid(self.process.pid, timeout=30)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        for child in descendants:
            stop_pid(child, timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def _start_one(
    dockerd: str,
    client: str,
    driver: str,
    namespace: str,
    prefix: str,
    timeout: float,
    extra_args: tuple[str, ...] = (),
) -> PrivateDockerd:
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    sock = root / "d.sock"
    (root / "config").mkdir()
    (root / "config" / "config.json").write_text("{}")
    env = {
        "DOCKER_HOST": f"unix://{sock}",
        "DOCKER_CONFIG": str(root / "config"),
        "DOCKER_BUILDKIT": "0",
        "DOCKER_CLI_HINTS": "false",
    }
    with (root / "dockerd.log").open("wb") as log:
        process = subprocess.Popen(
            [
                dockerd,
                "--data-root",
                str(root / "data"),
                "--exec-root",
                str(root / "ex"),
                "--pidfile",
                str(root / "dockerd.pid"),
                "-H",
                f"unix://{sock}",
                f"--storage-driver={driver}",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--log-level=warn",
                # Should dockerd find a system containerd and use it instead of starting its own,
                # keep out of the namespaces a system dockerd would use.
                f"--containerd-namespace={namespace}",
                f"--containerd-plugins-namespace={namespace}-plugins",
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
    daemon = PrivateDockerd(process, root, client, env, driver)
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.3) + 1):  # bounded in count and time
        if process.poll() is not None or time.monotonic() > deadline:
            break
        try:
            probe = daemon.docker("info", "--format", "{{.Driver}}", timeout=30)
        except subprocess.TimeoutExpired:
            continue
        if probe.returncode == 0 and probe.stdout.strip():
            if probe.stdout.strip() != driver:
                break
            return daemon
        time.sleep(0.3)
    tail = daemon.log_tail()
    daemon.stop()
    raise RuntimeError(f"dockerd ({driver}) did not start:\n{tail}")


def start_dockerd(
    drivers: tuple[str, ...] = ("overlay2", "vfs"),
    *,
    namespace: str = "ty-bench",
    prefix: str = "ty-bdk-",
    timeout: float = 60,
    extra_args: tuple[str, ...] = (),
) -> PrivateDockerd:
    """Start a private dockerd with the first storage driver of `drivers` that works, its
    containerd in `namespace`, its directory `/tmp/<prefix>...`, `extra_args` for dockerd (such as
    `--registry-mirror=URL`) (RuntimeError if none starts)."""
    found = docker_available()
    if found is None:
        raise RuntimeError("dockerd, docker or containerd is not installed")
    errors = []
    for driver in drivers:
        try:
            return _start_one(*found, driver, namespace, prefix, timeout, extra_args)
        except (RuntimeError, OSError) as exc:
            errors.append(str(exc))
    raise RuntimeError("\n".join(errors))
