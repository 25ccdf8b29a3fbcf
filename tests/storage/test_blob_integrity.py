"""What a client may fetch is kept, and is never served short: foreign layers are references,
a damaged blob answers BLOB_UNKNOWN with its reason, a push of the right bytes repairs it, and
`trustyard fsck` finds and quarantines corrupt blobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from storage.layout import DataLayout, S3Layout, s3_prefix
from storage.oci.digests import parse_digest
from tests.oci import OCI_CONFIG, OCI_MANIFEST, error_codes, push_blob, sha256
from tests.storage.gc_helpers import image, put_manifest, run_gc


async def test_pushed_foreign_layer_is_a_reference_gc_keeps(registry):
    client = registry.client
    foreign = b"a non-distributable layer someone pushed anyway"
    config = json.dumps({"os": "windows"}).encode()
    await push_blob(client, "win", config)
    await push_blob(client, "win", foreign)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                "digest": sha256(foreign),
                "size": len(foreign),
                "urls": ["https://example.com/layer.tar.gz"],
            }
        ],
    }
    assert (await put_manifest(client, "win", manifest, reference="ltsc"))[0] == 201
    report = await run_gc(registry)
    assert report.blobs == []
    resp = await client.get(f"/v2/win/blobs/{sha256(foreign)}")
    assert resp.status == 200
    assert await resp.read() == foreign


async def test_foreign_layer_need_not_be_pushed(registry):
    client = registry.client
    config = json.dumps({"os": "windows", "n": 2}).encode()
    await push_blob(client, "win", config)
    never_pushed = sha256(b"lives on a vendor's server")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                "digest": never_pushed,
                "size": 26,
                "urls": ["https://example.com/base.tar.gz"],
            }
        ],
    }
    assert (await put_manifest(client, "win", manifest, reference="ltsc"))[0] == 201
    # Pushed later, it is kept by that manifest.
    await push_blob(client, "win", b"lives on a vendor's server")
    assert (await run_gc(registry)).blobs == []


def damage(registry: Any, digest: str, keep: int) -> None:
    """Cut the stored bytes of a blob down to their first `keep` bytes, behind the server."""
    parsed = parse_digest(digest)
    section = registry.config.raw["storage"]
    if section["backend"] == "filesystem":
        path = DataLayout(registry.data_dir).blob(parsed)
        path.write_bytes(path.read_bytes()[:keep])
        return

    from storage.s3 import S3BlobStore

    store = S3BlobStore(registry.config.blob_store.s3, DataLayout(registry.data_dir))
    key = S3Layout(s3_prefix(section["s3"]["prefix"])).blob(parsed)
    body = store.client.get_object(Bucket=store.settings.bucket, Key=key)["Body"].read()
    store.client.put_object(Bucket=store.settings.bucket, Key=key, Body=body[:keep])
    store.client.close()


async def test_truncated_blob_is_refused_then_repaired_by_a_push(registry):
    client = registry.client
    data = b"0123456789" * 1000
    digest = await push_blob(client, "app", data)
    damage(registry, digest, 4000)

    resp = await client.get(f"/v2/app/blobs/{digest}")
    assert resp.status == 404
    body = await resp.json()
    assert error_codes(body) == ["BLOB_UNKNOWN"]
    assert "damaged" in body["errors"][0]["detail"]["reason"]
    # HEAD asks the storage too, so a client checking before it pushes sends the blob again.
    assert (await client.head(f"/v2/app/blobs/{digest}")).status == 404
    # A range past what is left is refused too, not answered short.
    ranged = await client.get(f"/v2/app/blobs/{digest}", headers={"Range": "bytes=5000-5099"})
    assert ranged.status == 404

    assert await push_blob(client, "app", data) == digest
    resp = await client.get(f"/v2/app/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data
    assert (await client.head(f"/v2/app/blobs/{digest}")).headers["Content-Length"] == "10000"


async def test_missing_blob_file_answers_blob_unknown_not_500(registry):
    client = registry.client
    digest = await push_blob(client, "app", b"about to vanish")
    parsed = parse_digest(digest)
    if registry.config.raw["storage"]["backend"] == "filesystem":
        DataLayout(registry.data_dir).blob(parsed).unlink()
    else:
        from storage.s3 import S3BlobStore

        store = S3BlobStore(registry.config.blob_store.s3, DataLayout(registry.data_dir))
        await store.delete(parsed)
        await store.close()
    resp = await client.get(f"/v2/app/blobs/{digest}")
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["BLOB_UNKNOWN"]


def trustyard(
    data_dir: Path, *args: str, config: Path | None = None
) -> subprocess.CompletedProcess:
    """Run the `trustyard` command on a data directory."""
    extra = ["--config", str(config)] if config else []
    return subprocess.run(
        [sys.executable, "-m", "registry", *args, "--data-dir", str(data_dir), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def config_file(registry: Any, tmp_path: Path) -> Path | None:
    """A YAML configuration naming the registry's storage section (None for the filesystem)."""
    section = registry.config.raw["storage"]
    if section["backend"] == "filesystem":
        return None
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"storage": section}))
    return path


async def test_fsck_finds_reports_and_quarantines_corrupt_blobs(registry, tmp_path):
    client = registry.client
    manifest = await image(client, "app", "fsck", layers=[b"good layer", b"will be flipped"])
    assert (await put_manifest(client, "app", manifest, reference="v1"))[0] == 201
    short = await push_blob(client, "app", b"will be cut short")
    flipped = sha256(b"will be flipped")
    damage(registry, short, 4)
    # Same length, other bytes: only re-hashing finds it.
    if registry.config.raw["storage"]["backend"] == "filesystem":
        DataLayout(registry.data_dir).blob(parse_digest(flipped)).write_bytes(b"WILL be flipped")
    else:
        from storage.s3 import S3BlobStore

        store = S3BlobStore(registry.config.blob_store.s3, DataLayout(registry.data_dir))
        store.client.put_object(
            Bucket=store.settings.bucket,
            Key=store.keys.blob(parse_digest(flipped)),
            Body=b"WILL be flipped",
        )
        store.client.close()
    config = config_file(registry, tmp_path)

    result = trustyard(registry.data_dir, "fsck", "--json", config=config)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["checked"] == 4
    found = {p["digest"]: p for p in report["problems"]}
    assert set(found) == {short, flipped}
    assert found[flipped]["kind"] == "corrupt"
    assert found[short]["kind"] == "size"
    assert all(p["quarantined"] for p in found.values())

    # Out of service: answered BLOB_UNKNOWN, never the wrong bytes; a push repairs it.
    resp = await client.get(f"/v2/app/blobs/{flipped}")
    assert resp.status == 404
    await push_blob(client, "app", b"will be flipped")
    assert await (await client.get(f"/v2/app/blobs/{flipped}")).read() == b"will be flipped"
    await push_blob(client, "app", b"will be cut short")

    result = trustyard(registry.data_dir, "fsck", config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 blobs checked" in result.stdout and "all intact" in result.stdout
