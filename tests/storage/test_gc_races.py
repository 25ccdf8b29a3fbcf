"""A collection running while clients push: every deletion is re-decided when it is made.

Each test stops the collection at one exact step (with a hooked store or database) and lets a
client act there, then checks that what the client was answered 201 for is all still served.
"""

from __future__ import annotations

import json

from tests.oci import OCI_MANIFEST, error_codes, push_blob, sha256
from tests.storage.gc_helpers import HookedStore, image, index_of, put_manifest, run_gc


async def test_tags_and_indexes_made_during_gc_save_their_manifests(registry):
    client = registry.client
    untagged: list[tuple[str, bytes]] = []
    shared = b"one layer shared by every image"
    for number in range(60):
        manifest = await image(client, "app", f"untagged {number}", layers=[shared])
        status, digest, body = await put_manifest(client, "app", manifest)
        assert status == 201
        untagged.append((digest, body))
    tagged, indexed = untagged[:20], untagged[20:40]
    index_digests: dict[str, str] = {}

    async def clients_act() -> None:
        # The collection has marked all 60; now 20 are tagged and 20 wrapped in tagged indexes.
        for number, (_digest, body) in enumerate(tagged):
            resp = await client.put(
                f"/v2/app/manifests/keep-{number}",
                data=body,
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert resp.status == 201
        for number, child in enumerate(indexed):
            status, digest, _ = await put_manifest(
                client, "app", index_of(child), reference=f"index-{number}"
            )
            assert status == 201
            index_digests[f"index-{number}"] = digest

    report = await run_gc(registry, db_hook=clients_act)
    assert len(report.manifests) == 20  # only the 20 nobody touched
    for number, (_digest, body) in enumerate(tagged):
        resp = await client.get(f"/v2/app/manifests/keep-{number}")
        assert resp.status == 200
        assert await resp.read() == body
    for tag in index_digests:
        resp = await client.get(f"/v2/app/manifests/{tag}")
        assert resp.status == 200
        for child in json.loads(await resp.read())["manifests"]:
            assert (await client.head(f"/v2/app/manifests/{child['digest']}")).status == 200
    resp = await client.get(f"/v2/app/blobs/{sha256(shared)}")
    assert await resp.read() == shared


async def test_a_referrer_pushed_during_gc_saves_its_subject(registry):
    client = registry.client
    status, subject, body = await put_manifest(client, "app", await image(client, "app", "s"))
    assert status == 201
    referrer = await image(client, "app", "signature")
    referrer["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(body)}

    async def sign() -> None:
        assert (await put_manifest(client, "app", referrer))[0] == 201

    await run_gc(registry, db_hook=sign)
    assert (await client.head(f"/v2/app/manifests/{subject}")).status == 200
    resp = await client.get(f"/v2/app/referrers/{subject}")
    assert len((await resp.json())["manifests"]) == 1


async def test_blob_reuploaded_while_gc_deletes_it_is_kept(registry):
    """The collection has decided to delete the blob; before the bytes go, a client uploads the
    same blob again (201) and pushes a manifest naming it (201): the blob must stay."""
    client = registry.client
    layer = b"a layer uploaded, forgotten, then uploaded again"
    await push_blob(client, "app", layer)

    async def push_again() -> None:
        manifest = await image(client, "app", "again", layers=[layer])
        assert (await put_manifest(client, "app", manifest, reference="v1"))[0] == 201

    destructive = {"delete", "delete_blobs", "empty_trash"}
    report = await run_gc(registry, store_hook=lambda s: HookedStore(s, push_again, destructive))
    assert sha256(layer) in report.blobs  # the collection did delete it, then it came back
    resp = await client.get(f"/v2/app/blobs/{sha256(layer)}")
    assert resp.status == 200
    assert await resp.read() == layer
    manifest = json.loads(await (await client.get("/v2/app/manifests/v1")).read())
    for blob in [manifest["config"], *manifest["layers"]]:
        resp = await client.get(f"/v2/app/blobs/{blob['digest']}")
        assert resp.status == 200
        assert sha256(await resp.read()) == blob["digest"]


async def test_blob_reuploaded_while_in_the_trash_is_put_back(registry):
    """Between the move to the trash and the deciding transaction, a client uploads the blob and
    mounts it elsewhere: the transaction sees it and the blob is put back, served meanwhile."""
    client = registry.client
    layer = b"uploaded again while trashed"
    await push_blob(client, "app", layer)

    async def upload_and_mount() -> None:
        await push_blob(client, "app", layer)
        resp = await client.post(f"/v2/other/blobs/uploads/?mount={sha256(layer)}&from=app")
        assert resp.status == 201
        resp = await client.get(f"/v2/other/blobs/{sha256(layer)}")
        assert resp.status == 200
        assert await resp.read() == layer

    hooked = {"move_to_trash"}
    report = await run_gc(
        registry, store_hook=lambda s: HookedStore(s, upload_and_mount, hooked, after=True)
    )
    assert sha256(layer) not in report.blobs
    for name in ("app", "other"):
        resp = await client.get(f"/v2/{name}/blobs/{sha256(layer)}")
        assert resp.status == 200
        assert await resp.read() == layer


async def test_manifest_pushed_after_the_blob_went_is_refused_not_broken(registry):
    """A manifest naming a blob whose deletion already committed is refused (the client pushes
    the blob again), never stored pointing at nothing."""
    client = registry.client
    layer = b"deleted before the manifest came"
    await push_blob(client, "app", layer)
    answers: list[int] = []

    async def late_manifest() -> None:
        config = json.dumps({"os": "linux"}).encode()
        await push_blob(client, "app", config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/json", "digest": sha256(config), "size": 15},
            "layers": [
                {"mediaType": "x", "digest": sha256(layer), "size": len(layer)},
            ],
        }
        body = json.dumps(manifest).encode()
        resp = await client.put(
            "/v2/app/manifests/late", data=body, headers={"Content-Type": OCI_MANIFEST}
        )
        answers.append((resp.status, error_codes(await resp.json())))

    await run_gc(
        registry, store_hook=lambda s: HookedStore(s, late_manifest, {"delete", "empty_trash"})
    )
    assert answers == [(400, ["MANIFEST_BLOB_UNKNOWN"])]
    resp = await client.get("/v2/app/manifests/late")
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["MANIFEST_UNKNOWN"]
