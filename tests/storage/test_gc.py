"""Garbage collection: what nothing references goes; what is referenced or young stays."""

from __future__ import annotations

import os
import time

from storage.filesystem import FilesystemBlobStore
from storage.gc import collect_garbage
from storage.layout import DataLayout
from storage.metadata import open_metadata
from storage.oci.digests import parse_digest
from tests.oci import push_blob, push_image, sha256


async def run_gc(data_dir, *, grace=0.0, dry_run=False, delete_untagged=True, stale=3600.0):
    layout = DataLayout(data_dir)
    store = FilesystemBlobStore(layout)
    db = await open_metadata(layout.database)
    try:
        return await collect_garbage(
            db,
            store,
            grace_period=grace,
            stale_upload_age=stale,
            delete_untagged=delete_untagged,
            dry_run=dry_run,
            now=time.time() + 1,
        )
    finally:
        await db.close()
        await store.close()


async def test_unreferenced_blobs_go_and_referenced_ones_stay(client, data_dir):
    _kept_digest, _ = await push_image(client, "app", "v1", layers=[b"kept layer"])
    loose = await push_blob(client, "app", b"never referenced")

    dry = await run_gc(data_dir, dry_run=True)
    assert loose in dry.blobs
    assert (await client.head(f"/v2/app/blobs/{loose}")).status == 200

    report = await run_gc(data_dir)
    assert report.blobs == [loose]
    assert report.bytes_freed == len(b"never referenced")
    assert (await client.head(f"/v2/app/blobs/{loose}")).status == 404
    assert not DataLayout(data_dir).blob(parse_digest(loose)).exists()
    layer = sha256(b"kept layer")
    assert await (await client.get(f"/v2/app/blobs/{layer}")).read() == b"kept layer"
    assert (await client.get("/v2/app/manifests/v1")).status == 200


async def test_grace_period_protects_recent_blobs(client, data_dir):
    loose = await push_blob(client, "app", b"just uploaded")
    report = await run_gc(data_dir, grace=3600)
    assert report.blobs == []
    assert (await client.head(f"/v2/app/blobs/{loose}")).status == 200


async def test_untagged_manifests_go_with_their_blobs_unless_kept(client, data_dir):
    old, _ = await push_image(client, "app", "latest", layers=[b"old layer"])
    new, _ = await push_image(client, "app", "latest", layers=[b"new layer"])

    kept = await run_gc(data_dir, delete_untagged=False)
    assert kept.manifests == []
    assert (await client.head(f"/v2/app/manifests/{old}")).status == 200

    report = await run_gc(data_dir)
    assert report.manifests == [("app", old)]
    assert sha256(b"old layer") in report.blobs
    assert (await client.head(f"/v2/app/manifests/{old}")).status == 404
    assert (await client.head(f"/v2/app/manifests/{new}")).status == 200
    assert (await client.head(f"/v2/app/blobs/{sha256(b'new layer')}")).status == 200


async def test_index_children_and_referrers_of_live_manifests_stay(client, data_dir):
    import json

    from tests.oci import OCI_INDEX, OCI_MANIFEST

    child, body = await push_image(client, "multi", "child-only")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": len(body)}],
        }
    )
    resp = await client.put(
        "/v2/multi/manifests/v1", data=index, headers={"Content-Type": OCI_INDEX}
    )
    assert resp.status == 201
    assert (await client.delete("/v2/multi/manifests/child-only")).status == 202
    report = await run_gc(data_dir)
    assert report.manifests == []
    assert (await client.head(f"/v2/multi/manifests/{child}")).status == 200


async def test_orphan_files_and_stale_uploads_are_removed(client, data_dir):
    layout = DataLayout(data_dir)
    orphan = b"renamed but never recorded"
    orphan_path = layout.blob(parse_digest(sha256(orphan)))
    orphan_path.parent.mkdir(parents=True, exist_ok=True)
    orphan_path.write_bytes(orphan)
    resp = await client.post("/v2/up/blobs/uploads/")
    upload_id = resp.headers["Docker-Upload-UUID"]
    stray = layout.upload("f" * 32)
    stray.write_bytes(b"left by a crash")
    old = time.time() - 7200
    os.utime(stray, (old, old))

    report = await run_gc(data_dir, stale=0)
    assert report.orphan_files == [sha256(orphan)]
    assert not orphan_path.exists()
    assert set(report.uploads) == {upload_id, "f" * 32}
    assert not stray.exists()
    assert (await client.get(f"/v2/up/blobs/uploads/{upload_id}")).status == 404
