"""Side doors: the content of an image the policy refuses to pull (quarantined), or whose push it
refused, cannot be fetched through the blob endpoints or copied out by a cross-repository mount;
content an immutable release needs cannot be deleted from under it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.context import CONTEXT
from registry.errors import status_of
from storage.oci.errors import MANIFEST_BLOB_UNKNOWN
from tests.auth.conftest import PASSWORDS, As, auth_section, basic, write_accounts
from tests.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    error_codes,
    push_blob,
    sha256,
)

POLICY = """\
version: 1
rules:
  - name: prod images are reviewed
    match: {repositories: ["prod/**", "team-a/prod"], on: [pull]}
    require:
      annotations: {com.example.reviewed: "^yes$"}
  - name: releases are reviewed
    match: {repositories: ["rel/**"], tags: ["v*"], on: [pull]}
    require:
      annotations: {com.example.reviewed: "^yes$"}
  - name: release tags are immutable
    match: {repositories: ["**"], tags: ["v*"], on: [push, delete]}
    require: {immutable_tags: true}
  - name: pushed images are labelled
    match: {repositories: ["labelled/**", "team-a/labelled"], on: [push]}
    require:
      labels: {org.opencontainers.image.source: "^https://git.example.com/"}
"""

REVIEWED = {"com.example.reviewed": "yes"}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
async def gated(start_client: Any, policy_file: Path) -> TestClient:
    return await start_client(policy={"file": str(policy_file), "reload": False})


async def push_manifest(
    client: Any, name: str, reference: str, manifest: dict[str, Any], media_type: str
) -> tuple[int, str, dict[str, Any]]:
    body = json.dumps(manifest).encode()
    resp = await client.put(
        f"/v2/{name}/manifests/{reference}", data=body, headers={"Content-Type": media_type}
    )
    payload = await resp.json() if resp.status >= 400 else {}
    return resp.status, sha256(body), payload


async def push_image(
    client: Any,
    name: str,
    reference: str,
    layer: bytes,
    *,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    expect: int = 201,
) -> tuple[str, str, str]:
    """Push an image (config, one layer); return (manifest, config, layer) digests."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {"Labels": labels or {}}, "r": reference}
    ).encode()
    await push_blob(client, name, config)
    await push_blob(client, name, layer)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer)],
    }
    if annotations:
        manifest["annotations"] = annotations
    status, digest, body = await push_manifest(client, name, reference, manifest, OCI_MANIFEST)
    assert status == expect, body
    return digest, sha256(config), sha256(layer)


async def denied(resp: Any) -> str:
    """The message of a 403 DENIED answer (asserting it is one)."""
    assert resp.status == 403, await resp.text()
    body = await resp.json()
    assert error_codes(body) == ["DENIED"]
    return body["errors"][0]["message"]


async def test_blobs_of_a_quarantined_image_are_refused(gated: TestClient) -> None:
    manifest, config, layer = await push_image(gated, "prod/app", "v1", b"secret layer bytes")
    await denied(await gated.get("/v2/prod/app/manifests/v1"))
    for digest in (config, layer):
        message = await denied(await gated.get(f"/v2/prod/app/blobs/{digest}"))
        assert 'rule "prod images are reviewed"' in message
        assert "com.example.reviewed" in message
        assert digest in message
        # With auth off everyone may push: a HEAD (no bytes) answers, as pushes need it.
        resp = await gated.head(f"/v2/prod/app/blobs/{digest}")
        assert resp.status == 200 and await resp.read() == b""
    # A range request is no way round it.
    resp = await gated.get(f"/v2/prod/app/blobs/{layer}", headers={"Range": "bytes=0-3"})
    assert resp.status == 403
    # The refusal is in the decision log, naming the rule and the image.
    rows = await gated.app[CONTEXT].db.list_decisions(repository="prod/app", outcome="deny")
    blob_rows = [r for r in rows if r.reference == layer]
    assert blob_rows and blob_rows[0].rule == "prod images are reviewed"
    assert blob_rows[0].digest == manifest


async def test_a_blob_shared_with_a_pullable_image_stays_pullable(gated: TestClient) -> None:
    shared = b"base layer shared by both"
    _, _, layer = await push_image(gated, "prod/app", "v1", shared)
    await denied(await gated.get(f"/v2/prod/app/blobs/{layer}"))
    # The reviewed image needs the same layer: it can be pulled, so can its layer (the cached
    # refusal is not reused after the push changed the repository).
    reviewed, config, _ = await push_image(gated, "prod/app", "v2", shared, annotations=REVIEWED)
    assert (await gated.get(f"/v2/prod/app/manifests/{reviewed}")).status == 200
    resp = await gated.get(f"/v2/prod/app/blobs/{layer}")
    assert resp.status == 200
    assert await resp.read() == shared
    assert (await gated.head(f"/v2/prod/app/blobs/{config}")).status == 200


async def test_a_quarantined_blob_cannot_be_mounted_elsewhere(gated: TestClient) -> None:
    _, config, layer = await push_image(gated, "prod/app", "v1", b"quarantined payload")
    for digest in (config, layer):
        resp = await gated.post(f"/v2/scratch/copy/blobs/uploads/?mount={digest}&from=prod/app")
        # Not mountable: a plain upload session, as the spec answers; no bytes moved.
        assert resp.status == 202, await resp.text()
        assert "/v2/scratch/copy/blobs/uploads/" in resp.headers["Location"]
        assert (await gated.head(f"/v2/scratch/copy/blobs/{digest}")).status == 404
    # So an image naming those blobs cannot be put together in an unpoliced repository.
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 1},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": 19}],
    }
    status, _, body = await push_manifest(gated, "scratch/copy", "latest", manifest, OCI_MANIFEST)
    assert status == status_of(MANIFEST_BLOB_UNKNOWN) and error_codes(body) == [
        "MANIFEST_BLOB_UNKNOWN"
    ]


async def test_a_pullable_blob_still_mounts(gated: TestClient) -> None:
    _, _, layer = await push_image(
        gated, "prod/app", "v1", b"reviewed payload", annotations=REVIEWED
    )
    resp = await gated.post(f"/v2/scratch/copy/blobs/uploads/?mount={layer}&from=prod/app")
    assert resp.status == 201, await resp.text()
    assert (await gated.get(f"/v2/scratch/copy/blobs/{layer}")).status == 200


async def test_children_of_a_quarantined_index_keep_their_blobs(gated: TestClient) -> None:
    """An index tagged `v1` is refused; its child, pulled by digest, is untagged (the tag rule
    does not see it), but the child's blobs are only part of the refused release."""
    child, config, layer = await push_image(gated, "rel/app", "dummy", b"arm bytes")
    # Untag the child so it is only reachable through the index.
    assert (await gated.delete("/v2/rel/app/manifests/dummy")).status == 202
    child_body = await (await gated.get(f"/v2/rel/app/manifests/{child}")).read()
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            descriptor(OCI_MANIFEST, child_body, platform={"os": "linux", "architecture": "arm64"})
        ],
    }
    status, _, body = await push_manifest(gated, "rel/app", "v1", index, OCI_INDEX)
    assert status == 201, body
    message = await denied(await gated.get("/v2/rel/app/manifests/v1"))
    assert 'rule "releases are reviewed"' in message
    for digest in (config, layer):
        message = await denied(await gated.get(f"/v2/rel/app/blobs/{digest}"))
        assert 'rule "releases are reviewed"' in message
    # A reviewed index over the same child makes the child's content pullable again.
    reviewed = {**index, "annotations": REVIEWED}
    status, _, body = await push_manifest(gated, "rel/app", "v2", reviewed, OCI_INDEX)
    assert status == 201, body
    assert (await gated.get(f"/v2/rel/app/blobs/{layer}")).status == 200


async def test_unrelated_repositories_are_not_slowed_or_changed(gated: TestClient) -> None:
    data = b"free bytes"
    digest = await push_blob(gated, "scratch/free", data)
    resp = await gated.get(f"/v2/scratch/free/blobs/{digest}")
    assert resp.status == 200 and await resp.read() == data


async def test_deleting_a_blob_an_immutable_release_needs_is_refused(gated: TestClient) -> None:
    _, config, layer = await push_image(gated, "prod/app", "v1", b"released layer")
    for digest in (config, layer):
        message = await denied(await gated.delete(f"/v2/prod/app/blobs/{digest}"))
        assert 'rule "release tags are immutable"' in message
        assert digest in message
    # Still there.
    ctx = gated.app[CONTEXT]
    assert await ctx.db.blob_in_repository("prod/app", layer) is not None
    # A blob no protected manifest needs can go.
    loose = await push_blob(gated, "prod/app", b"loose blob")
    assert (await gated.delete(f"/v2/prod/app/blobs/{loose}")).status == 202


async def test_deleting_the_child_of_an_immutable_index_is_refused(gated: TestClient) -> None:
    child, _, layer = await push_image(gated, "scratch/multi", "tmp", b"child layer")
    assert (await gated.delete("/v2/scratch/multi/manifests/tmp")).status == 202
    child_body = await (await gated.get(f"/v2/scratch/multi/manifests/{child}")).read()
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, child_body)],
    }
    status, _, body = await push_manifest(gated, "scratch/multi", "v1.0", index, OCI_INDEX)
    assert status == 201, body
    message = await denied(await gated.delete(f"/v2/scratch/multi/manifests/{child}"))
    assert 'rule "release tags are immutable"' in message
    assert "v1.0" in message
    assert (await gated.get(f"/v2/scratch/multi/manifests/{child}")).status == 200
    # The child's layer, two levels below the protected tag, is kept too.
    message = await denied(await gated.delete(f"/v2/scratch/multi/blobs/{layer}"))
    assert 'rule "release tags are immutable"' in message


# -- with accounts: who may read what no manifest needs --------------------------------------

PERMISSIONS: list[dict[str, Any]] = [
    {"namespace": "team-a/**", "groups": {"dev": "push"}},
    {"namespace": "team-a/**", "users": {"bob": "pull"}},
    {"namespace": "scratch/**", "users": {"bob": "push"}},
]


@pytest.fixture
async def accounts_gated(start_client: Any, policy_file: Path, data_dir: Path) -> TestClient:
    write_accounts(data_dir)
    return await start_client(
        policy={"file": str(policy_file), "reload": False},
        auth=auth_section(permissions=PERMISSIONS),
    )


async def test_blobs_of_a_refused_push_stay_with_the_pusher(accounts_gated: TestClient) -> None:
    alice = As(accounts_gated, basic("alice", PASSWORDS["alice"]))
    bob = As(accounts_gated, basic("bob", PASSWORDS["bob"]))
    _, config, layer = await push_image(alice, "team-a/labelled", "v1", b"unlabelled", expect=403)
    # The pusher checks what it uploaded (docker does, after each upload).
    assert (await alice.head(f"/v2/team-a/labelled/blobs/{layer}")).status == 200
    # A puller may not read the refused push's content, nor copy it out.
    message = await denied(await bob.get(f"/v2/team-a/labelled/blobs/{layer}"))
    assert (await bob.head(f"/v2/team-a/labelled/blobs/{layer}")).status == 403
    assert 'rule "pushed images are labelled"' in message
    resp = await bob.post(f"/v2/scratch/b/blobs/uploads/?mount={config}&from=team-a/labelled")
    assert resp.status == 202
    assert (await bob.head(f"/v2/scratch/b/blobs/{config}")).status == 404


async def test_a_puller_cannot_read_a_quarantined_blob(accounts_gated: TestClient) -> None:
    alice = As(accounts_gated, basic("alice", PASSWORDS["alice"]))
    bob = As(accounts_gated, basic("bob", PASSWORDS["bob"]))
    _, _, layer = await push_image(alice, "team-a/prod", "v1", b"quarantined for bob")
    message = await denied(await bob.get(f"/v2/team-a/prod/blobs/{layer}"))
    assert 'rule "prod images are reviewed"' in message
    assert (await bob.head(f"/v2/team-a/prod/blobs/{layer}")).status == 403
    # Its producer may read it, as it may read the manifest (to sign it), and check the blob
    # is there (a client pushing a fixed image that shares the layer does so).
    resp = await alice.get(f"/v2/team-a/prod/blobs/{layer}")
    assert resp.status == 200 and await resp.read() == b"quarantined for bob"
    assert (await alice.head(f"/v2/team-a/prod/blobs/{layer}")).status == 200
    resp = await bob.post(f"/v2/scratch/b/blobs/uploads/?mount={layer}&from=team-a/prod")
    assert resp.status == 202
    assert (await bob.head(f"/v2/scratch/b/blobs/{layer}")).status == 404
