"""A serving process freezes what start-up built out of Python's cycle collector, and says so
(with its collections and their pauses) in `/metrics` (registry/heap.py)."""

from __future__ import annotations

import gc
import re
import urllib.request
from pathlib import Path

from registry.heap import count_pauses, freeze_startup_heap, heap_metrics
from tests.server_process import start_registry


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} missing from /metrics"
    return float(found.group(1))


def test_the_server_freezes_its_start_up_heap_and_counts_its_collections(tmp_path: Path) -> None:
    server = start_registry(tmp_path / "data")
    try:
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as resp:
            text = resp.read().decode()
    finally:
        server.stop()
    # aiohttp, cryptography, sigstore and the routes: tens of thousands of objects.
    assert metric(text, "trustyard_python_gc_frozen_objects") > 20_000
    for generation in (0, 1, 2):
        assert (
            metric(text, f'trustyard_python_gc_collections_total{{generation="{generation}"}}') >= 0
        )
        assert (
            metric(text, f'trustyard_python_gc_pause_seconds_total{{generation="{generation}"}}')
            >= 0
        )


def test_collections_are_counted_and_timed_once_counting_starts() -> None:
    count_pauses()
    count_pauses()  # twice is once
    before = metric(heap_metrics(), 'trustyard_python_gc_collections_total{generation="2"}')
    gc.collect()
    text = heap_metrics()
    assert metric(text, 'trustyard_python_gc_collections_total{generation="2"}') == before + 1
    assert metric(text, 'trustyard_python_gc_pause_seconds_total{generation="2"}') > 0


def test_freezing_moves_every_live_object_out_of_the_collector() -> None:
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 20_000
        assert sum(gc.get_count()) < 100  # nothing left for a young collection to walk
    finally:
        gc.unfreeze()
