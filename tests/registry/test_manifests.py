"""Spec: "Pushing manifests", "Pulling manifests", "Deleting manifests", manifest validation."""

from __future__ import annotations

import json

import pytest

from tests.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    error_codes,
    push_blob,
    push_image,
    sha256,
)


async def test_push_by_tag_then_get_exact_bytes_by_tag_and_digest(client):
    digest, body = await push_image(client, "app/web", "v1")
    assert digest == sha256(body)
    for reference in ("v1", digest):
        resp = await client.get(
            f"/v2/app/web/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
        )
        assert resp.status == 200
        assert await resp.read() == body
        assert resp.headers["Content-Type"] == OCI_MANIFEST
        assert resp.headers["Docker-Content-Digest"] == digest
    head = await client.head("/v2/app/web/manifests/v1")
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(body))
    assert head.headers["Docker-Content-Digest"] == digest


async def test_put_answers_location_and_digest(client):
    config = await push_blob(client, "a", b"{}")
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
            "layers": [],
        }
    ).encode()
    resp = await client.put(
        "/v2/a/manifests/latest", data=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/a/manifests/{sha256(manifest)}"
    assert resp.headers["Docker-Content-Digest"] == sha256(manifest)


async def test_docker_schema2_manifest_and_list(client):
    amd, _ = await push_image(client, "d", "amd", media_type=DOCKER_MANIFEST)
    arm, _ = await push_image(client, "d", "arm", media_type=DOCKER_MANIFEST)
    listing = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                {
                    "mediaType": DOCKER_MANIFEST,
                    "digest": amd,
                    "size": 1,
                    "platform": {"architecture": "amd64", "os": "linux"},
                },
                {
                    "mediaType": DOCKER_MANIFEST,
                    "digest": arm,
                    "size": 1,
                    "platform": {"architecture": "arm64", "os": "linux"},
                },
            ],
        }
    ).encode()
    resp = await client.put(
        "/v2/d/manifests/multi", data=listing, headers={"Content-Type": DOCKER_LIST}
    )
    assert resp.status == 201, await resp.text()
    got = await client.get("/v2/d/manifests/multi")
    assert got.headers["Content-Type"] == DOCKER_LIST
    assert await got.read() == listing
    amd_resp = await client.get("/v2/d/manifests/amd")
    assert amd_resp.headers["Content-Type"] == DOCKER_MANIFEST


async def test_oci_index_needs_its_children_in_the_repository(client):
    child, child_body = await push_image(client, "i", "child")
    missing = sha256(b"no such manifest")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": child, "size": len(child_body)},
            {"mediaType": OCI_MANIFEST, "digest": missing, "size": 10},
        ],
    }
    resp = await client.put(
        "/v2/i/manifests/idx", data=json.dumps(index), headers={"Content-Type": OCI_INDEX}
    )
    assert resp.status == 400
    body = await resp.json()
    assert error_codes(body) == ["MANIFEST_BLOB_UNKNOWN"]
    assert body["errors"][0]["detail"]["digest"] == missing
    index["manifests"].pop()
    ok = await client.put(
        "/v2/i/manifests/idx", data=json.dumps(index), headers={"Content-Type": OCI_INDEX}
    )
    assert ok.status == 201


async def test_missing_layer_is_manifest_blob_unknown_with_the_digest(client):
    config = await push_blob(client, "m", b"{}")
    layer = b"never uploaded"
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
    }
    resp = await client.put(
        "/v2/m/manifests/t", data=json.dumps(manifest), headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 400
    body = await resp.json()
    assert error_codes(body) == ["MANIFEST_BLOB_UNKNOWN"]
    assert body["errors"][0]["detail"]["digest"] == sha256(layer)
    assert (await client.get("/v2/m/manifests/t")).status == 404


async def test_layers_must_be_in_this_repository_not_just_the_registry(client):
    await push_blob(client, "other", b"layer elsewhere")
    config = await push_blob(client, "mine", b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", b"layer elsewhere")],
    }
    resp = await client.put(
        "/v2/mine/manifests/t", data=json.dumps(manifest), headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["MANIFEST_BLOB_UNKNOWN"]


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"{not json", OCI_MANIFEST, "not valid JSON"),
        (b"[]", OCI_MANIFEST, "JSON object"),
        (json.dumps({"schemaVersion": 1}).encode(), OCI_MANIFEST, "schemaVersion"),
        (
            json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode(),
            OCI_MANIFEST,
            "does not match",
        ),
        (json.dumps({"schemaVersion": 2}).encode(), "application/x-unknown", "unsupported"),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {"digest": "x"},
                    "layers": [],
                }
            ).encode(),
            OCI_MANIFEST,
            "config.mediaType",
        ),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": "sha256:abc", "size": 2},
                    "layers": [],
                }
            ).encode(),
            OCI_MANIFEST,
            "not a valid digest",
        ),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": sha256(b"{}"), "size": -1},
                    "layers": [],
                }
            ).encode(),
            OCI_MANIFEST,
            "non-negative",
        ),
        (
            json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode(),
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "schema 1",
        ),
    ],
)
async def test_malformed_manifests_are_manifest_invalid_with_a_reason(
    client, body, content_type, reason
):
    await push_blob(client, "bad", b"{}")
    resp = await client.put(
        "/v2/bad/manifests/t", data=body, headers={"Content-Type": content_type}
    )
    assert resp.status == 400
    payload = await resp.json()
    assert error_codes(payload) == ["MANIFEST_INVALID"]
    assert reason in payload["errors"][0]["detail"]["reason"]


async def test_manifest_over_4_mib_is_413(client):
    body = b'{"schemaVersion": 2, "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    resp = await client.put(
        "/v2/big/manifests/t", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 413
    assert error_codes(await resp.json()) == ["MANIFEST_INVALID"]


async def test_put_by_digest_must_match_the_body(client):
    digest, body = await push_image(client, "pd", "ignored")
    resp = await client.put(
        f"/v2/pd/manifests/{sha256(b'other')}", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["DIGEST_INVALID"]
    ok = await client.put(
        f"/v2/pd/manifests/{digest}", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert ok.status == 201


async def test_invalid_tag_is_tag_invalid(client):
    resp = await client.put(
        "/v2/t/manifests/-bad", data=b"{}", headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["TAG_INVALID"]
    long_tag = "a" * 129
    resp = await client.get(f"/v2/t/manifests/{long_tag}")
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["MANIFEST_UNKNOWN"]


async def test_unknown_manifest(client):
    await push_image(client, "u", "v1")
    resp = await client.get("/v2/u/manifests/v2")
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["MANIFEST_UNKNOWN"]
    by_digest = await client.head(f"/v2/u/manifests/{sha256(b'nothing')}")
    assert by_digest.status == 404


async def test_retag_moves_the_tag(client):
    first, _ = await push_image(client, "rt", "latest")
    second, _ = await push_image(client, "rt", "latest", layers=[b"new layer"])
    assert first != second
    resp = await client.head("/v2/rt/manifests/latest")
    assert resp.headers["Docker-Content-Digest"] == second
    assert (await client.head(f"/v2/rt/manifests/{first}")).status == 200


async def test_delete_by_digest_removes_manifest_and_its_tags(client):
    digest, _ = await push_image(client, "del", "v1")
    resp = await client.delete(f"/v2/del/manifests/{digest}")
    assert resp.status == 202
    assert (await client.get(f"/v2/del/manifests/{digest}")).status == 404
    assert (await client.get("/v2/del/manifests/v1")).status == 404
    tags = await (await client.get("/v2/del/tags/list")).json()
    assert tags["tags"] == []
    again = await client.delete(f"/v2/del/manifests/{digest}")
    assert again.status == 404
    assert error_codes(await again.json()) == ["MANIFEST_UNKNOWN"]


async def test_delete_by_tag_removes_only_the_tag(client):
    digest, _ = await push_image(client, "del", "v1")
    resp = await client.delete("/v2/del/manifests/v1")
    assert resp.status == 202
    assert (await client.get("/v2/del/manifests/v1")).status == 404
    assert (await client.get(f"/v2/del/manifests/{digest}")).status == 200


async def test_delete_disabled(start_client):
    client = await start_client(storage={"delete_enabled": False})
    digest, _ = await push_image(client, "keep", "v1")
    resp = await client.delete(f"/v2/keep/manifests/{digest}")
    assert resp.status == 405
    assert error_codes(await resp.json()) == ["UNSUPPORTED"]
