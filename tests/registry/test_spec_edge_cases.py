"""Edge cases of the OCI Distribution Specification that the official conformance suite checks.

A reference that no manifest can have (`.INVALID_MANIFEST_NAME`, the suite's own example) is
"not found" on GET, HEAD and DELETE; a manifest naming a missing blob is a client error (400, as
Distribution and Zot answer). Every 4xx code Trustyard can answer is either in the spec's table
or listed in docs/architecture.md as a deliberate difference.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from registry.errors import status_of
from storage.oci.errors import ERROR_CODES
from tests.oci import descriptor, error_codes, push_blob, push_image, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

#: The codes spec.md's "Error Codes" table allows in a 4xx JSON body.
SPEC_CODES = {
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
}


@pytest.mark.parametrize(
    "reference", [".INVALID_MANIFEST_NAME", "a" * 129, "sha256:totallywrong", "md5:" + "0" * 32]
)
async def test_a_reference_that_cannot_exist_is_not_found(client, reference):
    await push_image(client, "edge", "v1")
    got = await client.get(f"/v2/edge/manifests/{reference}")
    assert got.status == 404
    body = await got.json()
    assert error_codes(body) == ["MANIFEST_UNKNOWN"]
    assert body["errors"][0]["detail"]["reason"]
    head = await client.head(f"/v2/edge/manifests/{reference}")
    assert head.status == 404
    deleted = await client.delete(f"/v2/edge/manifests/{reference}")
    assert deleted.status == 404
    assert error_codes(await deleted.json()) == ["MANIFEST_UNKNOWN"]


async def test_push_to_an_invalid_tag_is_still_refused_as_invalid(client):
    _, body = await push_image(client, "edge", "v1")
    resp = await client.put(
        "/v2/edge/manifests/.INVALID_MANIFEST_NAME",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["TAG_INVALID"]


async def test_a_manifest_naming_a_missing_blob_is_a_client_error(client):
    config = await push_blob(client, "edge", b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", b"never pushed")],
    }
    resp = await client.put(
        "/v2/edge/manifests/v2", data=json.dumps(manifest), headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 400
    body = await resp.json()
    assert error_codes(body) == ["MANIFEST_BLOB_UNKNOWN"]
    assert body["errors"][0]["detail"]["digest"] == sha256(b"never pushed")


async def test_referrers_of_an_invalid_digest_is_a_bad_request(client):
    # spec: "If the request is invalid, such as a <digest> with an invalid syntax, a 400".
    resp = await client.get("/v2/edge/referrers/sha256:totallywrong")
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["DIGEST_INVALID"]


def test_every_code_outside_the_spec_table_is_documented():
    extra = {code for code, entry in ERROR_CODES.items() if status_of(entry) < 500} - SPEC_CODES
    assert extra == {
        "TAG_INVALID",
        "RANGE_INVALID",
        "PAGINATION_NUMBER_INVALID",
        "QUERY_INVALID",
        "TEXT_INVALID",
    }
    docs = (Path(__file__).parents[2] / "docs" / "architecture.md").read_text()
    section = docs.split("## Where Trustyard differs from the specification", 1)[1]
    for code in sorted(extra):
        assert re.search(rf"`{code}`", section), code
    assert "`MANIFEST_BLOB_UNKNOWN`" in section
    assert "`BLOB_UPLOAD_INVALID`" in section
