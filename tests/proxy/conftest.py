"""Fixtures of the proxy tests: a reference registry upstream (TLS from a private CA,
htpasswd), a fault-injecting front, and a Trustyard proxying them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.auth.conftest import basic
from tests.proxy.upstreams import (
    PASSWORD,
    USER,
    Front,
    ReferenceRegistry,
    Upstream,
    reference_registry,
)


@pytest.fixture
def upstream_registry(tmp_path: Path) -> Iterator[ReferenceRegistry]:
    """Debian's docker-registry over TLS (private CA) with an htpasswd user."""
    registry = reference_registry(tmp_path / "upstream")
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def upstream(upstream_registry: ReferenceRegistry) -> Upstream:
    """A client pushing test images to the reference registry."""
    return Upstream(upstream_registry.url, upstream_registry.ca, basic(USER, PASSWORD))


@pytest.fixture
async def front(upstream_registry: ReferenceRegistry) -> AsyncIterator[Front]:
    """A forwarding front of the reference registry with faults on demand."""
    assert upstream_registry.ca is not None
    front = Front(upstream_registry.url, upstream_registry.ca.client_context())
    await front.start()
    try:
        yield front
    finally:
        await front.close()
