"""An index whose only children are signatures or attestations (nothing a runtime would run) is
judged by the platforms its descriptors list: one that lists none lacks every required platform
and is refused with that reason, a 403 a client shows, never a 500.

The attacker pushes, under a release tag, an index that holds only a signature-typed manifest
and no platform, hoping the platform check has nothing to look at and lets it through."""

from __future__ import annotations

import json

from policies.loader import parse_policy
from registry.context import CONTEXT
from tests.oci import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, descriptor
from tests.security.crafted import SIMPLE_SIGNING, image_config, push_blobs, put_manifest
from tests.security.test_engine_fail_closed import assert_push_denied, policy_text
from tests.security.test_engine_fail_closed import registry as registry


async def test_an_index_of_signatures_listing_no_platform_lacks_the_required_one(
    registry: object,
) -> None:
    client = registry(policy_text("{platforms: {required: [linux/amd64]}}"))  # type: ignore[operator]
    gate = client.server.app[CONTEXT].policy
    policy, gate.policy = gate.policy, parse_policy("version: 1\nrules: []\n")
    config, payload = image_config(), b'{"critical": {}}'
    await push_blobs(client, "app/web", config, payload)
    signature = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(SIMPLE_SIGNING, payload)],
        }
    ).encode()
    digest = descriptor(OCI_MANIFEST, signature)["digest"]
    assert (await put_manifest(client, "app/web", digest, signature)).status == 201
    gate.policy = policy
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, signature)],
    }
    await assert_push_denied(
        client,
        index,
        "platform linux/amd64 missing (this index has none); push a multi-platform index with "
        "linux/amd64",
        OCI_INDEX,
    )
