"""The record of `trustyard gc` runs on a data directory: a count and the last run's time.

GC runs as its own process (`trustyard gc`), so the server learns of runs from this small file
(`DataLayout.gc_runs`) when `/metrics` is read. Written atomically; a missing or damaged file
counts as no runs.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from storage.layout import DataLayout


def read_gc_runs(data_dir: Path) -> dict[str, float]:
    """`{"runs": N, "last_run": epoch seconds}` (zeros when GC never ran here)."""
    try:
        loaded = json.loads(DataLayout(data_dir).gc_runs.read_text())
        return {"runs": float(loaded["runs"]), "last_run": float(loaded["last_run"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {"runs": 0.0, "last_run": 0.0}


def record_gc_run(data_dir: Path, now: float | None = None) -> None:
    """Count one finished (not dry-run) garbage collection."""
    previous = read_gc_runs(data_dir)
    entry = {"runs": int(previous["runs"]) + 1, "last_run": time.time() if now is None else now}
    path = DataLayout(data_dir).gc_runs
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".gc-runs-")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(entry, out)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
