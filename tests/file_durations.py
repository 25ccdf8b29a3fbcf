"""Write the seconds each test file took into tests/file_durations.json, from a whole run's
`--junitxml` report, for one metadata backend:

    python3 -m pytest -n 2 --dist loadfile --junitxml=/tmp/run.xml
    python3 tests/file_durations.py /tmp/run.xml sqlite

(`postgresql` for a run with `TRUSTYARD_TEST_METADATA=postgresql`). The root conftest hands the
files to the xdist workers longest first from these numbers; only the order depends on them.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DURATIONS = ROOT / "tests" / "file_durations.json"
BACKENDS = ("sqlite", "postgresql")


def test_file(classname: str) -> str | None:
    """The test file a junit `classname` (`tests.storage.test_s3` or `….TestClass`) is in."""
    parts = classname.split(".")
    for end in range(len(parts), 0, -1):
        path = "/".join(parts[:end]) + ".py"
        if (ROOT / path).is_file():
            return path
    return None


def file_seconds(report: Path) -> dict[str, float]:
    """Seconds per test file (setup, call and teardown of its tests) in a junit report."""
    seconds: dict[str, float] = defaultdict(float)
    for case in ElementTree.parse(report).iter("testcase"):
        path = test_file(case.get("classname", ""))
        if path is not None:
            seconds[path] += float(case.get("time", "0"))
    return {path: round(value, 1) for path, value in sorted(seconds.items())}


def main(argv: list[str]) -> int:
    """Replace one backend's numbers in the durations file."""
    if len(argv) != 2 or argv[1] not in BACKENDS:
        print(__doc__, file=sys.stderr)
        return 2
    measured = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    measured[argv[1]] = file_seconds(Path(argv[0]))
    DURATIONS.write_text(json.dumps(measured, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
