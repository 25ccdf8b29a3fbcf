"""A pytest fork server: each mutant's tests without paying for a Python and pytest start.

A mutant costs one test run, and most of a short run is spent importing pytest, its plugins
(hypothesis, schemathesis, pytest-aiohttp) and the libraries we build on (aiohttp,
cryptography, sigstore): seconds a mutant, minutes a target. The server imports those once,
never any module of the tree being mutated, then forks a child for each request: the child
imports the project's modules fresh from disk (where cosmic-ray has just written the mutant) and
runs pytest in-process.

    python3 tests/mutation/forkserver.py serve SOCKET TEST_FILE...   # preload, then serve
    python3 tests/mutation/forkserver.py run SOCKET PYTEST_ARGS...   # cosmic-ray's test command

`run` exits with pytest's exit status, so cosmic-ray reads it as it would read pytest's.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

#: A child that runs longer than this is killed: a mutant that loops forever is detected.
CHILD_DEADLINE = 240.0

PROBE = """
import sys, pytest
class Report:
    def pytest_collection_finish(self, session):
        print("\\n@@MODULES@@" + " ".join(sorted(sys.modules)))
pytest.main(["-q", "--collect-only", "-p", "no:cacheprovider", *sys.argv[1:]], plugins=[Report()])
"""


def third_party_modules(root: Path, tests: list[str]) -> list[str]:
    """Names of the modules a collection of `tests` imports that are not the project's own."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *tests], cwd=root, capture_output=True, text=True
    ).stdout
    names = out.rsplit("@@MODULES@@", 1)[-1].split()
    wanted = []
    for name in names:
        module = sys.modules.get(name)
        if module is not None:
            continue
        top = name.split(".")[0]
        if (root / top).is_dir() or (root / f"{top}.py").is_file() or top == "__main__":
            continue
        wanted.append(name)
    return wanted


def preload(root: Path, tests: list[str]) -> None:
    """Import what the tests need from outside the tree; fail if any of the tree came along."""
    for name in third_party_modules(root, tests):
        # A module that will not import alone is left to the child to import.
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if (
            name not in ("__main__", "__mp_main__")
            and path
            and Path(path).resolve().is_relative_to(root)
        ):
            raise SystemExit(f"preloading imported {name} from the tree: mutants would not be seen")
    # pytest collects garbage several times a run: without this, each collection walks every
    # preloaded object (a second a mutant).
    gc.collect()
    gc.freeze()


def child(request: dict) -> None:
    """In the forked child: run pytest as asked, exit with its status (never return)."""
    code = 3
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        sys.path.insert(0, request["cwd"])
        import pytest

        code = int(pytest.main(request["args"]))
    finally:
        os._exit(code)


def wait(pid: int) -> int:
    """The child's exit status; a child past the deadline is killed (a hang is detected)."""
    deadline = time.monotonic() + CHILD_DEADLINE
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return 124
        time.sleep(0.01)


def serve(path: str, tests: list[str]) -> None:
    """Preload, then answer one request at a time until killed."""
    root = Path.cwd().resolve()
    preload(root, tests)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    print("ready", flush=True)
    while True:
        connection, _ = server.accept()
        with connection:
            data = b""
            while not data.endswith(b"\n"):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                data += chunk
            request = json.loads(data)
            pid = os.fork()
            if pid == 0:
                server.close()
                connection.close()
                child(request)
            code = wait(pid)
            connection.sendall(f"{code}\n".encode())


def run(path: str, args: list[str]) -> int:
    """Ask the server to run pytest with `args` here; its exit status."""
    request = {"cwd": os.getcwd(), "env": dict(os.environ), "args": args}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(path)
        connection.sendall(json.dumps(request).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = connection.recv(64)
            if not chunk:
                return 3  # the server went away: count it as a failure to test, not a kill
            answer += chunk
    code = int(answer)
    return code if code >= 0 else 1  # killed by a signal: the mutant crashed the tests


def main() -> int:
    command, path, *rest = sys.argv[1:]
    if command == "serve":
        serve(path, rest)
        return 0
    return run(path, rest)


if __name__ == "__main__":
    sys.exit(main())
