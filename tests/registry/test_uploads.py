"""Spec: "Pushing a blob in chunks", resumable uploads, session status, cancel, mounts."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator

from aiohttp.test_utils import TestClient

from registry.upload_sessions import BATCH
from tests.oci import error_codes, push_blob, sha256


async def start_session(client, name: str) -> str:
    resp = await client.post(f"/v2/{name}/blobs/uploads/")
    assert resp.status == 202
    assert resp.headers["Content-Length"] == "0"
    assert resp.headers["Range"] == "0-0"
    upload_id = resp.headers["Docker-Upload-UUID"]
    assert resp.headers["Location"] == f"/v2/{name}/blobs/uploads/{upload_id}"
    return resp.headers["Location"]


async def test_chunked_upload_with_content_range(client):
    data = os.urandom(3 * 65536 + 17)
    location = await start_session(client, "c")
    offset = 0
    for size in (65536, 65536, 65536, 17):
        chunk = data[offset : offset + size]
        resp = await client.patch(
            location,
            data=chunk,
            headers={
                "Content-Range": f"{offset}-{offset + size - 1}",
                "Content-Type": "application/octet-stream",
            },
        )
        assert resp.status == 202, await resp.text()
        offset += size
        assert resp.headers["Range"] == f"0-{offset - 1}"
        location = resp.headers["Location"]
    status = await client.get(location)
    assert status.status == 204
    assert status.headers["Range"] == f"0-{len(data) - 1}"
    resp = await client.put(f"{location}?digest={sha256(data)}")
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == sha256(data)
    assert await (await client.get(f"/v2/c/blobs/{sha256(data)}")).read() == data


async def test_streamed_patch_without_content_range_then_put_with_last_chunk(client):
    data = os.urandom(300_000)
    location = await start_session(client, "s")
    resp = await client.patch(location, data=data[:200_000])
    assert resp.status == 202
    assert resp.headers["Range"] == "0-199999"
    resp = await client.put(
        f"{resp.headers['Location']}?digest={sha256(data)}", data=data[200_000:]
    )
    assert resp.status == 201
    assert await (await client.get(f"/v2/s/blobs/{sha256(data)}")).read() == data


async def test_out_of_order_chunk_is_416_with_current_range(client):
    location = await start_session(client, "o")
    await client.patch(location, data=b"abcd", headers={"Content-Range": "0-3"})
    resp = await client.patch(location, data=b"efgh", headers={"Content-Range": "10-13"})
    assert resp.status == 416
    assert error_codes(await resp.json()) == ["RANGE_INVALID"]
    assert resp.headers["Range"] == "0-3"
    assert resp.headers["Location"] == location
    # The session is intact: the right chunk is still accepted.
    ok = await client.patch(location, data=b"efgh", headers={"Content-Range": "4-7"})
    assert ok.status == 202
    assert ok.headers["Range"] == "0-7"


async def test_content_range_and_length_must_agree(client):
    location = await start_session(client, "o")
    resp = await client.patch(location, data=b"abcde", headers={"Content-Range": "0-9"})
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["SIZE_INVALID"]
    bad = await client.patch(location, data=b"abc", headers={"Content-Range": "three-four"})
    assert bad.status == 416
    assert error_codes(await bad.json()) == ["RANGE_INVALID"]


async def test_put_without_digest_is_digest_invalid(client):
    location = await start_session(client, "p")
    resp = await client.put(location, data=b"x")
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["DIGEST_INVALID"]


async def test_wrong_digest_on_finish_drops_the_session(client):
    location = await start_session(client, "w")
    await client.patch(location, data=b"payload")
    resp = await client.put(f"{location}?digest={sha256(b'other')}")
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["DIGEST_INVALID"]
    gone = await client.get(location)
    assert gone.status == 404
    assert error_codes(await gone.json()) == ["BLOB_UPLOAD_UNKNOWN"]


async def test_cancel_then_session_is_unknown(client, data_dir):
    location = await start_session(client, "x")
    await client.patch(location, data=b"partial")
    resp = await client.delete(location)
    assert resp.status == 204
    status = await client.get(location)
    assert status.status == 404
    assert error_codes(await status.json()) == ["BLOB_UPLOAD_UNKNOWN"]
    assert list((data_dir / "uploads").iterdir()) == []


async def test_session_belongs_to_its_repository(client):
    location = await start_session(client, "mine")
    upload_id = location.rsplit("/", 1)[1]
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        resp = await client.request(method, f"/v2/theirs/blobs/uploads/{upload_id}")
        assert resp.status == 404, method
        assert error_codes(await resp.json()) == ["BLOB_UPLOAD_UNKNOWN"]
    bogus = await client.get("/v2/mine/blobs/uploads/..%2F..%2Fetc")
    # No route takes an upload id with slashes: it never becomes a path.
    assert (bogus.status, error_codes(await bogus.json())) == (404, ["UNSUPPORTED"])


async def test_upload_resumes_after_a_restart(start_client):
    data = os.urandom(2_500_000)
    first = await start_client()
    location = await start_session(first, "resume")
    resp = await first.patch(location, data=data[:1_000_000])
    assert resp.status == 202
    await first.close()

    second = await start_client()
    status = await second.get(location)
    assert status.status == 204
    assert status.headers["Range"] == "0-999999"
    resp = await second.patch(
        location, data=data[1_000_000:], headers={"Content-Range": f"1000000-{len(data) - 1}"}
    )
    assert resp.status == 202
    done = await second.put(f"{location}?digest={sha256(data)}")
    assert done.status == 201
    assert await (await second.get(f"/v2/resume/blobs/{sha256(data)}")).read() == data


async def test_cross_repository_mount(client):
    digest = await push_blob(client, "base/image", b"base layer bytes")
    resp = await client.post(f"/v2/app/image/blobs/uploads/?mount={digest}&from=base/image")
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/app/image/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == digest
    assert (await client.head(f"/v2/app/image/blobs/{digest}")).status == 200


async def test_mount_of_unknown_blob_falls_back_to_a_session(client):
    await push_blob(client, "base/image", b"something")
    missing = sha256(b"not there")
    resp = await client.post(f"/v2/app/blobs/uploads/?mount={missing}&from=base/image")
    assert resp.status == 202
    assert "Docker-Upload-UUID" in resp.headers
    # A repository that lacks the blob cannot lend it either.
    other = await push_blob(client, "elsewhere", b"only elsewhere")
    resp = await client.post(f"/v2/app/blobs/uploads/?mount={other}&from=base/image")
    assert resp.status == 202
    assert (await client.head(f"/v2/app/blobs/{other}")).status == 404


async def test_mount_checks_the_source_name(client):
    resp = await client.post(f"/v2/app/blobs/uploads/?mount={sha256(b'x')}&from=../etc")
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["NAME_INVALID"]


async def chunked(data: bytes) -> AsyncIterator[bytes]:
    """`data` as a chunked request body: no Content-Length, so only its bytes tell its size."""
    yield data


async def refusal(resp) -> tuple[int, list[str], str]:
    body = await resp.json()
    return resp.status, error_codes(body), body["errors"][0]["message"]


async def range_of(client: TestClient, location: str) -> str:
    status = await client.get(location)
    assert status.status == 204
    return status.headers["Range"]


async def test_a_chunk_longer_or_shorter_than_its_range_leaves_the_session_as_it_was(client):
    location = await start_session(client, "refused")
    first = await client.patch(location, data=b"abcd", headers={"Content-Range": "0-3"})
    assert (first.status, first.headers["Range"]) == (202, "0-3")
    for wrong in (b"EFGHIJ", b"EF", os.urandom(BATCH + 5)):
        resp = await client.patch(location, data=chunked(wrong), headers={"Content-Range": "4-7"})
        assert await refusal(resp) == (
            400,
            ["SIZE_INVALID"],
            "chunk shorter or longer than its Content-Range",
        )
        assert await range_of(client, location) == "0-3"
    ok = await client.patch(location, data=b"efgh", headers={"Content-Range": "4-7"})
    assert (ok.status, ok.headers["Range"]) == (202, "0-7")
    done = await client.put(f"{location}?digest={sha256(b'abcdefgh')}")
    assert done.status == 201, await done.text()
    assert await (await client.get(f"/v2/refused/blobs/{sha256(b'abcdefgh')}")).read() == (
        b"abcdefgh"
    )


async def test_a_last_chunk_longer_or_shorter_than_its_range_leaves_the_session_as_it_was(
    client,
):
    location = await start_session(client, "refused")
    await client.patch(location, data=b"abcd", headers={"Content-Range": "0-3"})
    digest = sha256(b"abcdefgh")
    for wrong in (b"EFGHIJ", b"EF", os.urandom(BATCH + 5)):
        resp = await client.put(
            f"{location}?digest={digest}", data=chunked(wrong), headers={"Content-Range": "4-7"}
        )
        assert await refusal(resp) == (
            400,
            ["SIZE_INVALID"],
            "chunk shorter or longer than its Content-Range",
        )
        assert await range_of(client, location) == "0-3"
    done = await client.put(
        f"{location}?digest={digest}", data=b"efgh", headers={"Content-Range": "4-7"}
    )
    assert done.status == 201, await done.text()
    assert await (await client.get(f"/v2/refused/blobs/{digest}")).read() == b"abcdefgh"


async def bytes_received(client: TestClient) -> int:
    text = await (await client.get("/metrics")).text()
    found = re.search(r"^trustyard_blob_bytes_received_total (\d+)$", text, re.MULTILINE)
    assert found is not None
    return int(found.group(1))


async def cut_off(client: TestClient, method: str, path: str, body: bytes, declared: int) -> None:
    """Send `method path` declaring `declared` bytes, then `body` (shorter), then wait until
    the registry wrote a batch of it to the upload; then hang up."""
    before = await bytes_received(client)
    _, writer = await asyncio.open_connection(client.host, client.port)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {client.host}\r\n"
        f"Content-Range: 4-{4 + declared - 1}\r\nContent-Length: {declared}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    async with asyncio.timeout(30):
        while await bytes_received(client) < before + BATCH:
            await asyncio.sleep(0.01)
    writer.close()
    await writer.wait_closed()


async def until_answered(client: TestClient, location: str) -> tuple[int, str]:
    """Status and Range of the right next chunk, once the request cut off has been answered
    (until then the session is held: "another request is writing this upload")."""
    async with asyncio.timeout(30):
        while True:
            resp = await client.patch(location, data=b"efgh", headers={"Content-Range": "4-7"})
            body = await resp.read()
            if b"another request is writing this upload" not in body:
                return resp.status, resp.headers["Range"]
            await asyncio.sleep(0.01)


async def test_a_chunk_cut_off_by_the_client_leaves_the_session_as_it_was(client):
    location = await start_session(client, "cut")
    await client.patch(location, data=b"abcd", headers={"Content-Range": "0-3"})
    await cut_off(client, "PATCH", location, os.urandom(BATCH + 100), 3 * BATCH)
    assert await until_answered(client, location) == (202, "0-7")
    done = await client.put(f"{location}?digest={sha256(b'abcdefgh')}")
    assert done.status == 201, await done.text()


async def test_a_last_chunk_cut_off_by_the_client_leaves_the_session_as_it_was(client):
    location = await start_session(client, "cut")
    await client.patch(location, data=b"abcd", headers={"Content-Range": "0-3"})
    digest = sha256(b"abcdefgh")
    await cut_off(client, "PUT", f"{location}?digest={digest}", os.urandom(BATCH + 100), 3 * BATCH)
    assert await until_answered(client, location) == (202, "0-7")
    done = await client.put(f"{location}?digest={digest}")
    assert done.status == 201, await done.text()
    assert await (await client.get(f"/v2/cut/blobs/{digest}")).read() == b"abcdefgh"
