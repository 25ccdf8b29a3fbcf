"""Spec: "Pushing manifests with subject" and "Listing referrers"."""

from __future__ import annotations

import json

from tests.oci import (
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    error_codes,
    push_blob,
    push_image,
    sha256,
)

EMPTY = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"


async def push_referrer(client, name, subject_digest, subject_size, artifact_type, note):
    await push_blob(client, name, EMPTY)
    layer = note.encode()
    await push_blob(client, name, layer)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor(EMPTY_TYPE, EMPTY),
        "layers": [descriptor("text/plain", layer)],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject_size},
        "annotations": {"org.example.note": note},
    }
    body = json.dumps(manifest).encode()
    resp = await client.put(
        f"/v2/{name}/manifests/{sha256(body)}", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers["OCI-Subject"] == subject_digest
    return sha256(body), body


async def test_referrers_lists_descriptors_with_artifact_type_and_annotations(client):
    subject, subject_body = await push_image(client, "ref", "v1")
    sig, sig_body = await push_referrer(
        client, "ref", subject, len(subject_body), "application/vnd.example.sig", "signed"
    )
    sbom, _ = await push_referrer(
        client, "ref", subject, len(subject_body), "application/spdx+json", "sbom"
    )
    resp = await client.get(f"/v2/ref/referrers/{subject}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == OCI_INDEX
    index = await resp.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    by_digest = {d["digest"]: d for d in index["manifests"]}
    assert set(by_digest) == {sig, sbom}
    assert by_digest[sig] == {
        "mediaType": OCI_MANIFEST,
        "digest": sig,
        "size": len(sig_body),
        "artifactType": "application/vnd.example.sig",
        "annotations": {"org.example.note": "signed"},
    }
    assert "OCI-Filters-Applied" not in resp.headers


async def test_artifact_type_filter(client):
    subject, body = await push_image(client, "ref", "v1")
    sig, _ = await push_referrer(
        client, "ref", subject, len(body), "application/vnd.example.sig", "a"
    )
    await push_referrer(client, "ref", subject, len(body), "application/spdx+json", "b")
    resp = await client.get(
        f"/v2/ref/referrers/{subject}", params={"artifactType": "application/vnd.example.sig"}
    )
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in (await resp.json())["manifests"]] == [sig]


async def test_artifact_type_defaults_to_config_media_type(client):
    subject, body = await push_image(client, "ref", "v1")
    await push_blob(client, "ref", b'{"a":1}')
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.example.config+json", b'{"a":1}'),
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(body)},
    }
    resp = await client.put(
        "/v2/ref/manifests/cfg", data=json.dumps(manifest), headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201
    listing = await (await client.get(f"/v2/ref/referrers/{subject}")).json()
    assert listing["manifests"][0]["artifactType"] == "application/vnd.example.config+json"


async def test_subject_may_be_pushed_before_it_exists_and_unknown_subjects_list_empty(client):
    future = sha256(b"not pushed yet")
    ref, _ = await push_referrer(client, "ref", future, 10, "application/vnd.example.sig", "early")
    listing = await (await client.get(f"/v2/ref/referrers/{future}")).json()
    assert [d["digest"] for d in listing["manifests"]] == [ref]
    empty = await client.get(f"/v2/ref/referrers/{sha256(b'nobody')}")
    assert empty.status == 200
    assert (await empty.json())["manifests"] == []


async def test_invalid_subject_digest_is_400(client):
    resp = await client.get("/v2/ref/referrers/sha256:nothex")
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["DIGEST_INVALID"]


async def test_deleted_referrer_disappears(client):
    subject, body = await push_image(client, "ref", "v1")
    ref, _ = await push_referrer(client, "ref", subject, len(body), "application/x", "gone")
    assert (await client.delete(f"/v2/ref/manifests/{ref}")).status == 202
    listing = await (await client.get(f"/v2/ref/referrers/{subject}")).json()
    assert listing["manifests"] == []
