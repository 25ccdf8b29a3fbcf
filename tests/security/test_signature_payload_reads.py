"""A manifest typed as a signature stays exempt from image rules only while its payload's stored
bytes can be shown inert: when they cannot be read (the blob lost from disk, the storage
unreachable) it is judged as the image it may be, and the rules that apply to images decide,
with their usual reason; never a 500, never an exemption.

The attacker pushes a tar under a signature's media type, then makes its bytes unreadable to the
check (podman would still unpack whatever it is served)."""

from __future__ import annotations

import hashlib
from typing import Any

from aiohttp.test_utils import TestClient

from policies.facts import MAX_SIGNATURE_LAYERS
from registry.context import CONTEXT
from storage.oci.digests import parse_digest
from tests.oci import OCI_CONFIG, OCI_MANIFEST, descriptor
from tests.security.crafted import (
    SIMPLE_SIGNING,
    image_config,
    push_blobs,
    push_simple_signature,
    put_manifest,
)
from tests.security.test_image_classification import SIG_TAG, assert_denied, assert_pulled
from tests.security.test_image_classification import gated as gated

PAYLOAD = b'{"critical": {}}'


async def test_a_signature_whose_payload_cannot_be_read_is_judged_as_an_image(
    gated: TestClient,
) -> None:
    assert (await push_simple_signature(gated, "app/web", SIG_TAG, PAYLOAD)).status == 201
    await assert_pulled(gated, SIG_TAG)  # inert: a signature, exempt from the label rule
    store = gated.server.app[CONTEXT].store
    path = store.local_path(parse_digest("sha256:" + hashlib.sha256(PAYLOAD).hexdigest()))
    assert path is not None
    path.unlink()
    await gated.server.app[CONTEXT].policy.evidence_arrived("app/web")  # decide afresh
    await assert_denied(gated, SIG_TAG)


async def test_a_signature_whose_payload_storage_fails_is_judged_as_an_image(
    gated: TestClient,
    monkeypatch: Any,
) -> None:
    """A storage error that is not an `OSError` (an S3 backend unreachable) too."""
    from storage.errors import StorageUnavailable

    payload = hashlib.sha256(PAYLOAD).hexdigest()
    store = gated.server.app[CONTEXT].store
    read = store.read

    def unreachable(digest: Any, start: int = 0, end: int | None = None) -> Any:
        if str(digest).endswith(payload):
            raise StorageUnavailable({"backend": "s3", "reason": "connection refused"})
        return read(digest, start, end)

    assert (await push_simple_signature(gated, "app/web", SIG_TAG, PAYLOAD)).status == 201
    monkeypatch.setattr(store, "read", unreachable)
    await assert_denied(gated, SIG_TAG)


async def _push_signature_layers(client: TestClient, count: int) -> None:
    """A manifest typed as a signature with `count` simple-signing layers (one inert payload)."""
    config = image_config()
    await push_blobs(client, "app/web", config, PAYLOAD)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(SIMPLE_SIGNING, PAYLOAD)] * count,
    }
    assert (await put_manifest(client, "app/web", SIG_TAG, manifest)).status == 201


async def test_a_signature_with_more_layers_than_are_checked_is_judged_as_an_image(
    gated: TestClient,
) -> None:
    """Each payload's bytes are read to show it inert, up to MAX_SIGNATURE_LAYERS: one layer
    more and the manifest is judged as the image it may be, not exempt unread."""
    await _push_signature_layers(gated, MAX_SIGNATURE_LAYERS + 1)
    await assert_denied(gated, SIG_TAG)


async def test_a_signature_with_as_many_layers_as_are_checked_stays_a_signature(
    gated: TestClient,
) -> None:
    await _push_signature_layers(gated, MAX_SIGNATURE_LAYERS)
    await assert_pulled(gated, SIG_TAG)
