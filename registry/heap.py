"""The Python heap of a serving process: what start-up built is frozen out of the cycle
collector, and the collector's pauses are counted for `/metrics`.

Start-up leaves about 100,000 long-lived objects (aiohttp, cryptography, sigstore, the policy,
the routes). Python's full (generation 2) collection walks every one of them, and it runs
whenever enough objects have been promoted since the last one: under load, the objects of the
requests in flight at each young collection are promoted, so a full collection came every few
thousand requests and held the event loop for tens of milliseconds (hundreds on a loaded
machine): every request waiting at that moment got it added to its latency, which set the p99.
`gc.freeze()` moves what exists after start-up to a permanent generation the collector never
walks; collections then look only at objects made since, and the garbage of a request is found
exactly as before (nothing frozen is freed, and start-up's objects live as long as the process).
"""

from __future__ import annotations

import gc
import time
from typing import Any

#: Collector pauses since start: (collections, seconds) per generation.
_PAUSES: dict[int, list[float]] = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
_started: list[float] = []


def freeze_startup_heap() -> int:
    """Collect what start-up left as garbage, then freeze the rest out of the collector; the
    number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def count_pauses() -> None:
    """Time every collection from now on (two clock reads each) for `heap_metrics`."""
    if _on_collection not in gc.callbacks:
        gc.callbacks.append(_on_collection)


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter()]
    elif _started:
        totals = _PAUSES[info["generation"]]
        totals[0] += 1
        totals[1] += time.perf_counter() - _started.pop()


def heap_metrics() -> str:
    """A `/metrics` section: objects frozen, and collections and their pauses per generation."""
    lines = [
        "# HELP trustyard_python_gc_frozen_objects Objects frozen out of Python's cycle "
        "collector after start-up.",
        "# TYPE trustyard_python_gc_frozen_objects gauge",
        f"trustyard_python_gc_frozen_objects {gc.get_freeze_count()}",
        "# HELP trustyard_python_gc_collections_total Python cycle collections, by generation.",
        "# TYPE trustyard_python_gc_collections_total counter",
    ]
    lines += [
        f'trustyard_python_gc_collections_total{{generation="{g}"}} {int(n)}'
        for g, (n, _) in sorted(_PAUSES.items())
    ]
    lines += [
        "# HELP trustyard_python_gc_pause_seconds_total Time the process stood still in Python's "
        "cycle collector, by generation.",
        "# TYPE trustyard_python_gc_pause_seconds_total counter",
    ]
    lines += [
        f'trustyard_python_gc_pause_seconds_total{{generation="{g}"}} {s:.6f}'
        for g, (_, s) in sorted(_PAUSES.items())
    ]
    return "\n".join(lines) + "\n"
