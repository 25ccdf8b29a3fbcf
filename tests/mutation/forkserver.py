"""A pytest fork server: each mutant's tests without paying for a Python and pytest start.

A mutant costs one test run, and most of a short run is spent importing pytest, its plugins
(hypothesis, schemathesis, pytest-aiohttp) and the libraries we build on (aiohttp,
cryptography, sigstore): seconds a mutant, minutes a target. The server imports those once,
never any module of the tree being mutated, then forks a child for each request: the child
imports the project's modules fresh from disk (where cosmic-ray has just written the mutant) and
runs pytest in-process.

Each mutant runs only the tests that reach it. Once, before any mutant, a child runs the whole
list and records which tests call which functions of the mutated modules. For each request the
server finds the line cosmic-ray changed (against the modules as they were at start) and runs,
in their usual order, only the tests that called the function holding it; none when no test
does (the mutant survives: nothing reaches it). A change outside any function body (a class
attribute, a default, a decorator: run at import) runs every test, as does a test that reaches
none of the modules in-process (it may drive a server subprocess).

    python3 tests/mutation/forkserver.py serve SOCKET MODULES TEST_FILE...   # preload, serve
    python3 tests/mutation/forkserver.py run SOCKET PYTEST_ARGS...   # cosmic-ray's test command

`run` exits with pytest's exit status, so cosmic-ray reads it as it would read pytest's.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: A mutant's tests are stopped after four times the unmutated run, and never sooner than this:
#: a mutant that loops forever is detected (and listed in `timeouts.log`, to be looked at).
CHILD_DEADLINE = 600.0
#: The exit status of a run stopped at its deadline.
TIMED_OUT = 124

PROBE = """
import sys, pytest
class Report:
    def pytest_collection_finish(self, session):
        print("\\n@@MODULES@@" + " ".join(sys.modules))
pytest.main(["-q", "--collect-only", "-p", "no:cacheprovider", *sys.argv[1:]], plugins=[Report()])
"""


def third_party_modules(root: Path, tests: list[str]) -> list[str]:
    """Names of the modules a collection of `tests` imports that are not the project's own, in
    the order they were first imported (another order can break a package: `_asyncio` imported
    before `asyncio` leaves asyncio with two registries of the current task)."""
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


def define_replaced_exception() -> None:
    """Define, as a builtin, the name cosmic-ray's `ExceptionReplacer` writes into a narrowed
    `except` clause: left undefined, the clause raises `NameError` when an exception reaches
    it and the mutant is killed whatever the exception (tests/mutation/exception_name.py says
    the same for a pytest started afresh; this file runs as a script, outside the package)."""
    import builtins

    from cosmic_ray.exceptions import CosmicRayTestingException

    builtins.CosmicRayTestingException = CosmicRayTestingException  # type: ignore[attr-defined]


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


def reached(root: Path, modules: list[str], tests: list[str]) -> tuple[list[str], dict, float]:
    """Run every test once in a child: the test ids in order, for each module the first line
    of each code object each test called (`{module: {line: [test ids]}}`), and how long the
    run took."""
    files = {str((root / m).resolve()): m for m in modules}
    with tempfile.NamedTemporaryFile(suffix=".json") as out, tempfile.TemporaryFile() as log:
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                code = record_calls(root, files, tests, out.name)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        started = time.monotonic()
        if wait(pid, None) != 0:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-4000:]
            raise SystemExit(f"the unmutated tree fails its tests:\n{tail}")
        data = json.loads(Path(out.name).read_text())
    return data["order"], data["calls"], time.monotonic() - started


def record_calls(root: Path, files: dict[str, str], tests: list[str], out: str) -> int:
    """In the child of `reached`: pytest with a profiler on, the calls written to `out`."""
    import threading

    import pytest

    os.chdir(root)
    sys.path.insert(0, str(root))
    # This run writes pytest's rewritten test modules (never mutated) for every later run; the
    # project's own bytecode is written again, hash-checked, by `hash_checked_bytecode`.
    sys.dont_write_bytecode = False
    current: list[str] = [""]
    order: list[str] = []
    calls: dict[str, dict[int, set[str]]] = {m: {} for m in files.values()}

    recording = [True]

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "call" and recording[0]:
            code = frame.f_code  # type: ignore[attr-defined]
            module = files.get(code.co_filename)
            if module is not None:
                calls[module].setdefault(code.co_firstlineno, set()).add(current[0])

    class Track:
        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_protocol(self, item: pytest.Item) -> object:
            current[0] = item.nodeid
            order.append(item.nodeid)
            yield
            current[0] = ""

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        code = int(pytest.main(["-q", "-p", "no:cacheprovider", *tests], plugins=[Track()]))
    finally:
        # Threads the tests left behind keep the profiler: they must stop recording first.
        recording[0] = False
        sys.setprofile(None)
        threading.setprofile(None)
    shown = {m: {str(line): sorted(ids) for line, ids in by.items()} for m, by in calls.items()}
    Path(out).write_text(json.dumps({"order": order, "calls": shown}))
    return code


def hash_checked_bytecode(root: Path) -> None:
    """Bytecode for the unmutated tree that Python uses only while the source's hash matches:
    a mutant, whatever its size and time, is always compiled afresh, and nothing else is."""
    import compileall
    import py_compile

    for package in sorted(p for p in root.iterdir() if (p / "__init__.py").is_file()):
        compileall.compile_dir(
            package,
            quiet=1,
            force=True,
            invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
        )


class Selector:
    """Which tests can see a mutant: those that called the function it is in."""

    def __init__(self, root: Path, modules: list[str], tests: list[str]) -> None:
        self.root = root
        self.tests = tests
        self.order, calls, took = reached(root, modules, tests)
        #: A mutant's tests may take this long: a run past it loops forever (or nearly).
        self.deadline = max(CHILD_DEADLINE, 4 * took)
        hash_checked_bytecode(root)
        self.original = {m: (root / m).read_text() for m in modules}
        self.calls = {m: {int(line): ids for line, ids in by.items()} for m, by in calls.items()}
        touching = {i for by in self.calls.values() for ids in by.values() for i in ids}
        #: Tests that reach no mutated module in-process (a server subprocess): always run.
        self.always = {i for i in self.order if i not in touching}
        self.functions = {m: function_spans(text) for m, text in self.original.items()}

    def where(self) -> str:
        """`module:line` of the change in the tree now, or "" when it is unchanged."""
        for module, text in self.original.items():
            now = (self.root / module).read_text()
            if now != text:
                return f"{module}:{changed_line(text, now)}"
        return ""

    def select(self) -> list[str] | None:
        """The test ids to run for the tree as it is now; None: every test file."""
        for module, text in self.original.items():
            now = (self.root / module).read_text()
            if now == text:
                continue
            first = changed_line(text, now)
            span = innermost(self.functions[module], first)
            if span is None:
                return None  # run at import: every test sees it
            start, end = span
            ids = {i for line, by in self.calls[module].items() if start <= line <= end for i in by}
            return [i for i in self.order if i in ids or i in self.always]
        return None


def changed_line(before: str, after: str) -> int:
    """The first line (1-based) where `after` differs from `before`."""
    old, new = before.splitlines(), after.splitlines()
    for number, (a, b) in enumerate(zip(old, new, strict=False), start=1):
        if a != b:
            return number
    return min(len(old), len(new)) + 1


def function_spans(source: str) -> list[tuple[int, int, int]]:
    """Each function's (first line of its code object, last line, first line of its body)."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            spans.append((first, node.end_lineno or node.lineno, node.body[0].lineno))
    return spans


def innermost(spans: list[tuple[int, int, int]], line: int) -> tuple[int, int] | None:
    """The code-object lines of the innermost function whose body holds `line`, or None."""
    best = None
    for first, end, body in spans:
        if body <= line <= end and (best is None or first >= best[0]):
            best = (first, end)
    return best


def child(request: dict) -> None:
    """In the forked child: run pytest as asked, exit with its status (never return)."""
    code = 3
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # The tests' output is read only when a run must be explained (the unmutated baseline).
        log = request["env"].get("TRUSTYARD_MUTATION_LOG") or os.devnull
        sink = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(sink, 1)
        os.dup2(sink, 2)
        sys.path.insert(0, request["cwd"])
        import pytest

        code = int(pytest.main(request["args"]))
    finally:
        os._exit(code)


def wait(pid: int, seconds: float | None) -> int:
    """The child's exit status; a child still running after `seconds` is killed (a hang)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return TIMED_OUT
        time.sleep(0.01)


def serve(path: str, modules: list[str], tests: list[str]) -> None:
    """Preload, learn which tests reach which functions, then answer one request at a time
    until killed."""
    root = Path.cwd().resolve()
    define_replaced_exception()  # inherited by every child, before any mutant is imported
    preload(root, tests)
    selector = Selector(root, modules, tests)
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
            chosen = selector.select()
            if chosen is not None:
                if not chosen:
                    connection.sendall(b"0\n")  # no test reaches the mutant: it survives
                    continue
                request["args"] = [a for a in request["args"] if a not in tests] + chosen
            pid = os.fork()
            if pid == 0:
                server.close()
                connection.close()
                child(request)
            code = wait(pid, selector.deadline)
            if code == TIMED_OUT:
                with (root / "timeouts.log").open("a") as log:
                    log.write(f"{selector.where()}\n")
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
        serve(path, rest[0].split(","), rest[1:])
        return 0
    return run(path, rest)


if __name__ == "__main__":
    sys.exit(main())
