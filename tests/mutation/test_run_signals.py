"""`tests/mutation/run.py` stopped by a signal in the middle of a mutant leaves nothing behind:
the source tree as it was, no copy of the tree holding the mutant, and no process still running
the mutant's tests (the fork server and the test run it forked)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = "registry/events/signing.py"
#: The target whose tests reach MODULE (the CI smoke target: its fork server starts quickly).
TARGET = "events-verify"
#: Starting the fork server runs the target's tests once, unmutated; on a loaded machine that
#: may take minutes (a bound on a wait that ends the moment the mutant is on disk).
APPLIED_WITHIN = 600.0


def session_with_one_survivor(path: Path) -> None:
    """A cosmic-ray session holding one surviving mutant of MODULE: a `+` turned into `-`."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE mutation_specs (job_id TEXT, module_path TEXT, operator_name TEXT, "
            "occurrence INTEGER, start_pos_row INTEGER)"
        )
        db.execute("CREATE TABLE work_results (job_id TEXT, test_outcome TEXT)")
        db.execute(
            "INSERT INTO mutation_specs VALUES ('job', ?, 'core/ReplaceBinaryOperator_Add_Sub', "
            "0, 0)",
            (MODULE,),
        )
        db.execute("INSERT INTO work_results VALUES ('job', 'SURVIVED')")


def processes_under(folder: Path) -> list[str]:
    """Command lines of the processes working in `folder` or naming it (the fork server's
    socket, a test run in the copy)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if str(folder) in command or cwd.startswith(str(folder)):
            found.append(f"{entry.name}: {command.strip()} (in {cwd})")
    return found


#: A pytest plugin given to every test run run.py starts (through PYTEST_ADDOPTS): a run on a
#: tree whose MODULE is not the original says so in a file and then holds, so the signal lands
#: while the mutant is applied and its tests are running, however fast the machine.
HOLD = """
import hashlib, os, pathlib, time

def pytest_sessionstart(session):
    module = pathlib.Path.cwd() / os.environ["HOLD_MODULE"]
    if hashlib.sha256(module.read_bytes()).hexdigest() != os.environ["HOLD_ORIGINAL"]:
        pathlib.Path(os.environ["HOLD_FLAG"]).write_text(str(module.parents[2]))
        time.sleep(3600)
"""


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("mode", ["recheck", "run"])
def test_run_stopped_while_a_mutant_is_applied_leaves_nothing_behind(
    tmp_path: Path, mode: str, stop: signal.Signals
) -> None:
    source = ROOT / MODULE
    original = source.read_bytes()
    session = tmp_path / "session.sqlite"
    session_with_one_survivor(session)
    # run.py's work tree goes here; a short path, as the fork server's socket lives in it and
    # a Unix socket's path holds at most 107 bytes.
    temporary = Path(tempfile.mkdtemp(prefix="ty-signals-"))
    plugins, flag = tmp_path / "plugins", tmp_path / "held"
    plugins.mkdir()
    (plugins / "trustyard_hold.py").write_text(HOLD)
    # The tool, not a backend, is under test: its test runs use SQLite whatever this pass uses
    # (a database handed to this test is not theirs to share).
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TRUSTYARD_TEST_METADATA", "TRUSTYARD_METADATA")
    }
    env = {
        **inherited,
        "TMPDIR": str(temporary),
        "PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")]),
        "PYTEST_ADDOPTS": "-p trustyard_hold",
        "HOLD_MODULE": MODULE,
        "HOLD_ORIGINAL": hashlib.sha256(original).hexdigest(),
        "HOLD_FLAG": str(flag),
    }
    if mode == "recheck":
        arguments = ["--recheck", str(session), TARGET]
    else:
        arguments = [TARGET, "--results", str(tmp_path / "results")]
    started = subprocess.Popen(
        [sys.executable, "tests/mutation/run.py", *arguments],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + APPLIED_WITHIN
        while not flag.exists() and started.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not flag.exists():
            started.kill()
            output, _ = started.communicate()
            raise AssertionError(f"no test run ever started on a mutant: {output.decode()[-2000:]}")
        started.send_signal(stop)
        output, _ = started.communicate(timeout=60)
        # Whatever ran the mutant's tests ends with run.py (a moment for the kernel to reap it).
        left = processes_under(temporary)
        for _ in range(100):
            if not left:
                break
            time.sleep(0.05)
            left = processes_under(temporary)
        leftovers = sorted(p.name for p in temporary.iterdir())
    finally:
        if started.poll() is None:
            started.kill()
            started.wait()
        for pid in processes_under(temporary):  # what this test started, if it was left
            os.kill(int(pid.split(":")[0]), signal.SIGKILL)
        shutil.rmtree(temporary, ignore_errors=True)
    assert source.read_bytes() == original
    assert started.returncode != 0, output.decode()
    assert left == []
    assert leftovers == [], "run.py's copy of the tree (holding the mutant) is left"
