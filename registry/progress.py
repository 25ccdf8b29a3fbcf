"""Progress of long commands (backup, restore, library import), shown only on a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

#: Redraw at most this often (seconds): a line per blob would cost more than the copy.
_INTERVAL = 0.2


def terminal_progress(
    label: str, stream: TextIO | None = None
) -> Callable[[int, int], None] | None:
    """A `(done, total)` callback redrawing one line on `stream` (stderr), or None when it is not
    a terminal: redirected output stays free of progress noise."""
    out = stream or sys.stderr
    if not out.isatty():
        return None
    last = 0.0

    def show(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done < total and now - last < _INTERVAL:
            return
        last = now
        percent = 100 * done // total if total else 100
        end = "\n" if done >= total else ""
        out.write(f"\r{label}: {done}/{total} ({percent}%)" + end)
        out.flush()

    return show
