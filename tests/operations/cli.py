"""Run the real `trustyard` command (`python -m registry`) in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[2]


def trustyard(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`trustyard ARGS...` from the project root; its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "registry", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=kwargs.pop("cwd", ROOT),
        # This checkout's code even when run from another folder.
        env={**os.environ, "PYTHONPATH": str(ROOT), **kwargs.pop("env", {})},
        **kwargs,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The only line the command wrote to stderr (asserting there is one and no traceback)."""
    lines = [line for line in result.stderr.splitlines() if "WARNING" not in line]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trustyard: "), lines[0]
    return lines[0]
