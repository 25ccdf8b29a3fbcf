"""The floors' import contract (`[tool.importlinter]` in pyproject.toml, run by `.ci/run`):
it holds on the tree, and it fails, naming the import, when someone adds an upward import, an
HTTP import below `registry/`, or an import cycle inside a package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("registry", "policies", "storage", "shared")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` run on `tree` (its own packages first on the path, no cache)."""
    command = [str(LINT_IMPORTS)] if LINT_IMPORTS.exists() else ["lint-imports"]
    return subprocess.run(
        [*command, "--no-logo", "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_of_tree(into: Path) -> Path:
    """The packages and pyproject.toml copied into `into`, without bytecode caches."""
    for package in PACKAGES:
        caches = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / package, into / package, ignore=caches)
    shutil.copy2(ROOT / "pyproject.toml", into / "pyproject.toml")
    return into


def add_import(module: Path, statement: str) -> None:
    """Append `statement` at the end of `module` (where a careless edit would put it)."""
    module.write_text(module.read_text() + f"\n{statement}\n")


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "contract", "named"),
    [
        # Storage reaching up to the HTTP floor's configuration.
        (
            "storage/gc.py",
            "import registry.config",
            "Floors: registry over policies over storage over shared BROKEN",
            "storage.gc -> registry.config",
        ),
        # The policy reaching up to an HTTP handler for a helper.
        (
            "policies/engine.py",
            "from registry.handlers import policy_api",
            "Floors: registry over policies over storage over shared BROKEN",
            "policies.engine -> registry.handlers.policy_api",
        ),
        # The OCI vocabulary reaching up to the policy.
        (
            "storage/oci/digests.py",
            "import policies.decisions",
            "Floors: registry over policies over storage over shared BROKEN",
            "storage.oci.digests -> policies.decisions",
        ),
        # A storage failure becoming an HTTP answer again.
        (
            "storage/errors.py",
            "from aiohttp import web",
            "Only registry speaks HTTP: storage, policies and shared do not import aiohttp BROKEN",
            "storage.errors -> aiohttp",
        ),
        # The manifest pipeline answering HTTP itself instead of its handler.
        (
            "registry/pipeline/push.py",
            "from aiohttp import web",
            "The manifest pipeline speaks no HTTP: registry.pipeline does not import aiohttp "
            "BROKEN",
            "registry.pipeline.push -> aiohttp",
        ),
        # Two storage modules importing each other (hidden in a function is still a cycle).
        (
            "storage/oci/digests.py",
            "def _late() -> None:\n    import storage.metadata  # noqa: F401",
            "No import cycles inside a package BROKEN",
            "No cycles are allowed in storage.",
        ),
    ],
)
def test_a_forbidden_import_breaks_the_contract_and_is_named(
    tmp_path, module, statement, contract, named
):
    tree = copy_of_tree(tmp_path)
    add_import(tree / module, statement)
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert contract in result.stdout
    assert named in result.stdout, result.stdout
    if "cycles" in contract:
        assert ".oci -> .metadata" in result.stdout, result.stdout
