"""Spec: "Pulling blobs", "Pushing a blob monolithically", "Deleting blobs", ranges."""

from __future__ import annotations

import hashlib
import os

from tests.oci import error_codes, push_blob, sha256


async def test_monolithic_push_then_head_and_get(client):
    data = os.urandom(100_000)
    digest = await push_blob(client, "lib/one", data)

    head = await client.head(f"/v2/lib/one/blobs/{digest}")
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Docker-Content-Digest"] == digest
    assert await head.read() == b""

    get = await client.get(f"/v2/lib/one/blobs/{digest}")
    assert get.status == 200
    assert get.headers["Docker-Content-Digest"] == digest
    assert await get.read() == data


async def test_monolithic_push_answers_location_and_digest(client):
    data = b"monolithic"
    resp = await client.post(f"/v2/a/blobs/uploads/?digest={sha256(data)}", data=data)
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/a/blobs/{sha256(data)}"
    assert resp.headers["Docker-Content-Digest"] == sha256(data)


async def test_single_range_is_answered_206_with_content_range(client):
    data = bytes(range(256)) * 4
    digest = await push_blob(client, "r", data)
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert await resp.read() == data[10:20]

    suffix = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=-5"})
    assert suffix.status == 206
    assert await suffix.read() == data[-5:]

    open_ended = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=1000-"})
    assert open_ended.status == 206
    assert await open_ended.read() == data[1000:]


async def test_unsatisfiable_or_malformed_range_is_range_invalid(client):
    data = b"0123456789"
    digest = await push_blob(client, "r", data)
    for header in ("bytes=10-20", "bytes=abc", "items=0-1"):
        resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": header})
        assert resp.status == 416, header
        assert error_codes(await resp.json()) == ["RANGE_INVALID"]
        assert resp.headers["Content-Range"] == "bytes */10"


async def test_unknown_blob_and_invalid_digest(client):
    await push_blob(client, "x", b"present")
    missing = sha256(b"missing")
    resp = await client.get(f"/v2/x/blobs/{missing}")
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["BLOB_UNKNOWN"]
    head = await client.head(f"/v2/x/blobs/{missing}")
    assert head.status == 404

    for bad in ("sha256:xyz", "md5:" + "a" * 32, "sha256:" + "A" * 64, "nodigest"):
        resp = await client.get(f"/v2/x/blobs/{bad}")
        assert resp.status == 400, bad
        assert error_codes(await resp.json()) == ["DIGEST_INVALID"]


async def test_blob_is_only_visible_in_repositories_that_link_it(client):
    digest = await push_blob(client, "team/a", b"private to a")
    resp = await client.head(f"/v2/team/b/blobs/{digest}")
    assert resp.status == 404


async def test_sha512_digests_are_verified(client):
    data = os.urandom(5000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    resp = await client.post(f"/v2/s/blobs/uploads/?digest={digest}", data=data)
    assert resp.status == 201
    get = await client.get(f"/v2/s/blobs/{digest}")
    assert await get.read() == data

    wrong = "sha512:" + hashlib.sha512(b"other").hexdigest()
    resp = await client.post(f"/v2/s/blobs/uploads/?digest={wrong}", data=data + b"!")
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["DIGEST_INVALID"]


async def test_digest_mismatch_keeps_nothing(client, data_dir):
    data = os.urandom(3 << 20)
    claimed = sha256(b"something else")
    resp = await client.post(f"/v2/m/blobs/uploads/?digest={claimed}", data=data)
    assert resp.status == 400
    body = await resp.json()
    assert error_codes(body) == ["DIGEST_INVALID"]
    assert body["errors"][0]["detail"]["actual"] == sha256(data)
    assert (await client.head(f"/v2/m/blobs/{claimed}")).status == 404
    assert (await client.head(f"/v2/m/blobs/{sha256(data)}")).status == 404
    assert list((data_dir / "uploads").iterdir()) == []
    assert [p for p in (data_dir / "blobs").rglob("*") if p.is_file()] == []


async def test_blob_is_stored_once_across_repositories(client, data_dir):
    data = b"shared layer"
    for name in ("one", "two", "three"):
        await push_blob(client, name, data)
    files = [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]
    assert len(files) == 1
    assert files[0].read_bytes() == data


async def test_delete_blob_unlinks_it_from_the_repository(client):
    digest = await push_blob(client, "d", b"to delete")
    resp = await client.delete(f"/v2/d/blobs/{digest}")
    assert resp.status == 202
    assert (await client.head(f"/v2/d/blobs/{digest}")).status == 404
    again = await client.delete(f"/v2/d/blobs/{digest}")
    assert again.status == 404
    assert error_codes(await again.json()) == ["BLOB_UNKNOWN"]


async def test_deletes_can_be_disabled(start_client):
    client = await start_client(storage={"delete_enabled": False})
    digest = await push_blob(client, "d", b"kept")
    resp = await client.delete(f"/v2/d/blobs/{digest}")
    assert resp.status == 405
    assert error_codes(await resp.json()) == ["UNSUPPORTED"]
    assert (await client.head(f"/v2/d/blobs/{digest}")).status == 200
