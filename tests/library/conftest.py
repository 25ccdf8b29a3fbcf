"""Fixtures of the library tests: a registry enforcing a policy with a library section."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

#: Two years from today: the supported base stays supported whenever the tests run.
SUPPORTED_UNTIL = (datetime.now(UTC) + timedelta(days=730)).date().isoformat()

POLICY = f"""\
version: 1
library:
  namespace: library
  images:
    - name: python
      tags: ["3.12-slim", "3.13-slim"]
      source: docker.io/library/python
      supported_until: {SUPPORTED_UNTIL}
    - name: distroless/static
      tags: ["nonroot"]
    - name: old
      tags: ["1"]
      supported_until: 2020-01-01
rules:
  - name: apps build on the library
    match: {{repositories: ["apps/**"], on: [push]}}
    require:
      base_image: {{from_library: true, allow_deprecated: false, max_behind: 30d}}
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
async def registry(start_client: Any, policy_file: Path) -> TestClient:
    """A registry enforcing POLICY."""
    return await start_client(policy={"file": str(policy_file), "reload": False})
