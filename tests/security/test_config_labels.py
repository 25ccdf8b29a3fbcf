"""An image config whose `Labels` are not an object of strings cannot be judged by a label rule:
the push is refused with that reason (a 403 the client shows), whatever else the labels hold.

The attacker writes the required label with a value that is not a string (a number, a list, an
object), or the labels as a list, hoping a looser reader finds the label "present"."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.oci import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor
from tests.security.crafted import push_blobs, put_manifest
from tests.security.test_engine_fail_closed import policy_text
from tests.security.test_engine_fail_closed import registry as registry

SOURCE = "org.opencontainers.image.source"
RULE = '{labels: {org.opencontainers.image.source: "^https://git.example.com/"}}'


@pytest.mark.parametrize(
    "labels",
    [
        {SOURCE: 1},
        {SOURCE: "https://git.example.com/app", "build": 7},
        {SOURCE: ["https://git.example.com/app"]},
        {SOURCE: {"url": "https://git.example.com/app"}},
        [SOURCE, "https://git.example.com/app"],
        "https://git.example.com/app",
    ],
    ids=["number", "one string and a number", "list", "object", "labels a list", "a string"],
)
async def test_labels_that_are_not_strings_cannot_be_judged(
    registry: Any,
    labels: Any,
) -> None:
    client = registry(policy_text(RULE))
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {"Labels": labels}}
    ).encode()
    layer = b"labelled layer"
    await push_blobs(client, "app/web", config, layer)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer)],
    }
    resp = await put_manifest(client, "app/web", "v1", manifest)
    assert resp.status == 403, await resp.text()
    body = await resp.json()
    assert [e["code"] for e in body["errors"]] == ["DENIED"]
    assert body["errors"][0]["message"] == (
        'rule "guarded": cannot be judged: the image config\'s Labels are not an object of strings'
    )
