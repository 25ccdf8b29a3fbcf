"""Fixtures shared by the policy tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.signing import write_rekor_root


@pytest.fixture
def rekor(tmp_path: Path) -> ec.EllipticCurvePrivateKey:
    """A private Rekor's key, published in `tmp_path/trusted_root.json`."""
    return write_rekor_root(tmp_path)
