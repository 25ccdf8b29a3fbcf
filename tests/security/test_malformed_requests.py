"""Malformed input is refused with a 4xx and the spec's error body, never a 500: numbers in other
scripts or with thousands of digits, odd digests, names at the limit, broken headers, a session
deleted while a chunk streams in, and clients that never finish sending their headers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.config import ConfigError, load_config
from registry.context import CONTEXT
from registry.events.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify
from tests.oci import error_codes, push_blob, push_image, sha256
from tests.scans.conftest import HMAC_SECRET, SCANNERS
from tests.server_process import start_registry

#: Numbers Python's int() or str.isdigit() take that no HTTP grammar allows.
NOT_ASCII_COUNTS = ["٣", "²", "1_000", "+5", " 5", "5 ", "-1", "5.0", "0x10", "9" * 5000, "\uff11"]


async def spec_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    """Assert `resp` is `status` with the spec's error body carrying `code`."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.headers["Content-Type"].startswith("application/json"), text
    body = await resp.json()
    assert error_codes(body) == [code], body
    return body


@pytest.mark.parametrize("n", NOT_ASCII_COUNTS)
async def test_page_size_must_be_ascii_digits(client: TestClient, n: str) -> None:
    await push_image(client, "app", "v1")
    for path in ("/v2/app/tags/list", "/v2/_catalog"):
        resp = await client.get(path, params={"n": n})
        await spec_error(resp, 400, "PAGINATION_NUMBER_INVALID")


async def test_page_size_at_the_edges(client: TestClient) -> None:
    await push_image(client, "app", "v1")
    resp = await client.get("/v2/app/tags/list", params={"n": "0"})
    assert resp.status == 200 and (await resp.json())["tags"] == []
    resp = await client.get("/v2/app/tags/list", params={"n": "9" * 18})
    assert resp.status == 200 and (await resp.json())["tags"] == ["v1"]


@pytest.mark.parametrize(
    "last", ["%ff%fe", "%00", "x" * 6000, "%F0%9F%92%A9", "..%2F..%2Fetc", "%ED%A0%80"]
)
async def test_odd_last_is_only_a_key(client: TestClient, last: str) -> None:
    await push_image(client, "app", "v1")
    for path in ("/v2/app/tags/list", "/v2/_catalog"):
        resp = await client.get(f"{path}?n=5&last={last}")
        assert resp.status in (200, 400), await resp.text()
        if resp.status == 400:
            await spec_error(resp, 400, "PAGINATION_NUMBER_INVALID")


@pytest.mark.parametrize(
    "query", ["n=%ff", "n=%00", "last=1&n=%D9%A3", "n=1&n=2&n=%B2", "n=%EF%BC%91"]
)
async def test_percent_encoded_counts(client: TestClient, query: str) -> None:
    await push_image(client, "app", "v1")
    resp = await client.get(f"/v2/app/tags/list?{query}")
    await spec_error(resp, 400, "PAGINATION_NUMBER_INVALID")


@pytest.mark.parametrize("n", NOT_ASCII_COUNTS)
async def test_admin_api_counts(client: TestClient, n: str) -> None:
    resp = await client.get("/api/v1/decisions", params={"n": n})
    await spec_error(resp, 400, "PAGINATION_NUMBER_INVALID")
    resp = await client.get("/api/v1/decisions", params={"last": n})
    await spec_error(resp, 400, "QUERY_INVALID")
    resp = await client.get("/api/v1/events/deliveries", params={"n": n})
    await spec_error(resp, 400, "QUERY_INVALID")


@pytest.mark.parametrize(
    "value",
    ["bytes=٣-", "bytes=²-3", "bytes=0-" + "9" * 5000, "bytes=" + "1" * 5000 + "-", "bytes=-٣",
     "bytes=0-1,3-4", "bytes=5-2", "bytes=99-", "items=0-1", "bytes=1_0-20", "bytes= 1-2", ""],
)  # fmt: skip
async def test_bad_range_is_416(client: TestClient, value: str) -> None:
    digest = await push_blob(client, "app", b"0123456789")
    resp = await client.get(f"/v2/app/blobs/{digest}", headers={"Range": value})
    body = await spec_error(resp, 416, "RANGE_INVALID")
    assert resp.headers["Content-Range"] == "bytes */10", body


async def test_good_ranges_still_served(client: TestClient) -> None:
    digest = await push_blob(client, "app", b"0123456789")
    for value, expected in (("bytes=2-4", b"234"), ("bytes=-3", b"789"), ("bytes=7-", b"789")):
        resp = await client.get(f"/v2/app/blobs/{digest}", headers={"Range": value})
        assert resp.status == 206 and await resp.read() == expected


@pytest.mark.parametrize(
    "value",
    ["٣-4", "0-٣", "²-3", "0-" + "9" * 5000, "1_0-20", "+0-3", "0x0-3", "bytes 0--3",
     "0-3/junk", "0-3/", "0-3/3", "0-3/-1", "0-3/4/4", "0-3/٤"],
)  # fmt: skip
async def test_bad_content_range_on_patch_is_416(client: TestClient, value: str) -> None:
    resp = await client.post("/v2/app/blobs/uploads/")
    location = resp.headers["Location"]
    resp = await client.patch(location, data=b"abcd", headers={"Content-Range": value})
    await spec_error(resp, 416, "RANGE_INVALID")
    # The session is intact: a good chunk still goes in.
    resp = await client.patch(location, data=b"abcd", headers={"Content-Range": "0-3"})
    assert resp.status == 202, await resp.text()


@pytest.mark.parametrize("value", ["0-3/4", "0-3/*", "bytes 0-3/4", "0-3/100"])
async def test_content_range_with_a_total_is_accepted(client: TestClient, value: str) -> None:
    resp = await client.post("/v2/app/blobs/uploads/")
    resp = await client.patch(
        resp.headers["Location"], data=b"abcd", headers={"Content-Range": value}
    )
    assert resp.status == 202, await resp.text()
    assert resp.headers["Range"] == "0-3"


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "A" * 64,
        "SHA256:" + "a" * 64,
        "sha512:" + "a" * 64,
        "md5:" + "a" * 32,
        "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
        "sha256:" + "a" * 5000,
        "sha256:" + "٣" * 64,
        "sha256:",
        ":" + "a" * 64,
        "sha256:" + "g" * 64,
    ],
)
async def test_odd_digests_are_digest_invalid(client: TestClient, digest: str) -> None:
    from urllib.parse import quote

    quoted = quote(digest, safe=":+")
    await push_blob(client, "app", b"x")
    for method, path in (
        ("GET", f"/v2/app/blobs/{quoted}"),
        ("HEAD", f"/v2/app/blobs/{quoted}"),
        ("DELETE", f"/v2/app/blobs/{quoted}"),
        ("GET", f"/v2/app/manifests/{quoted}"),
        ("DELETE", f"/v2/app/manifests/{quoted}"),
        ("GET", f"/v2/app/referrers/{quoted}"),
        ("POST", f"/v2/app/blobs/uploads/?digest={quoted}"),
        ("POST", f"/v2/app/blobs/uploads/?mount={quoted}&from=app"),
    ):
        resp = await client.request(method, path, data=b"x" if method == "POST" else None)
        assert 400 <= resp.status < 500, (method, path, resp.status, await resp.text())
        if method != "HEAD":
            assert resp.status in (400, 404), (method, path)
            codes = error_codes(await resp.json())
            assert codes[0] in ("DIGEST_INVALID", "TAG_INVALID", "MANIFEST_UNKNOWN"), codes
    resp = await client.post("/v2/app/blobs/uploads/")
    resp = await client.put(f"{resp.headers['Location']}?digest={quoted}", data=b"x")
    await spec_error(resp, 400, "DIGEST_INVALID")


async def test_names_at_the_length_limit(client: TestClient) -> None:
    at_limit = "/".join(["a" * 63] * 4)  # 255 characters
    assert len(at_limit) == 255
    digest = sha256(b"nothing")
    await spec_error(await client.get(f"/v2/{at_limit}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    await spec_error(await client.get(f"/v2/{at_limit}/tags/list"), 404, "NAME_UNKNOWN")
    await push_blob(client, at_limit, b"fits")
    over = at_limit + "a"
    paths = (f"/v2/{over}/blobs/{digest}", f"/v2/{over}/tags/list", f"/v2/{over}/blobs/uploads/")
    for path in paths:
        resp = await client.request("POST" if path.endswith("/") else "GET", path)
        await spec_error(resp, 400, "NAME_INVALID")
    resp = await client.get(f"/v2/{'a/' * 3000}tags/list")
    await spec_error(resp, 400, "NAME_INVALID")


async def test_odd_tags_and_upload_ids(client: TestClient) -> None:
    # A reference no tag can have names no manifest: GET answers 404, PUT refuses the tag.
    for bad in ("t" * 129, "%E2%80%AEv1"):
        await spec_error(await client.get(f"/v2/app/manifests/{bad}"), 404, "MANIFEST_UNKNOWN")
        resp = await client.put(f"/v2/app/manifests/{bad}", data=b"{}")
        await spec_error(resp, 400, "TAG_INVALID")
    for upload in ("%ff", "..", "٣" * 32, "A" * 32, "a" * 5000):
        resp = await client.get(f"/v2/app/blobs/uploads/{upload}")
        assert resp.status in (400, 404), await resp.text()
        assert error_codes(await resp.json())[0] in ("BLOB_UPLOAD_UNKNOWN", "UNSUPPORTED")


# -- the scanner webhook's (and events') signature headers -----------------------------------


@pytest.mark.parametrize("timestamp", ["²", "٣" * 10, "1_763_640_000", "+1763640000", "9" * 5000])
async def test_webhook_timestamp_must_be_ascii_seconds(start_client: Any, timestamp: str) -> None:
    scanning = await start_client(scanners=SCANNERS)
    body = b"{}"
    headers = {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(HMAC_SECRET, body)[SIGNATURE_HEADER],
        "Content-Type": "application/json",
    }
    resp = await scanning.post(f"/api/v1/scans?digest={sha256(b'x')}", data=body, headers=headers)
    body_json = await spec_error(resp, 401, "UNAUTHORIZED")
    assert "ASCII digits" in body_json["errors"][0]["message"] + str(body_json["errors"][0])


def test_event_signature_check_refuses_odd_timestamps() -> None:
    body = b"{}"
    good = sign("secret", body)
    for timestamp in ("²", "٣" * 10, "1_763_640_000", "9" * 5000):
        problem = verify("secret", {**good, TIMESTAMP_HEADER: timestamp}, body)
        assert problem == f"{TIMESTAMP_HEADER} must be Unix seconds in ASCII digits"
    assert verify("secret", good, body) is None


# -- races ---------------------------------------------------------------------------------


async def until_written(client: TestClient, location: str) -> None:
    """Until a request holds the session (it is past the session's locks, streaming in): the
    in-process sign of it, the session's own lock (`registry.upload_sessions`)."""
    sessions = client.app[CONTEXT].uploads._sessions
    upload_id = location.rsplit("/", 1)[1]
    async with asyncio.timeout(60):  # only turns a hang into a failure
        while upload_id not in sessions or not sessions[upload_id].lock.locked():
            await asyncio.sleep(0.001)


async def refused_cancellation(resp: Any, location: str, end: int) -> None:
    """A DELETE while another request writes the session: refused, with where it stands."""
    body = await spec_error(resp, 400, "BLOB_UPLOAD_INVALID")
    assert body["errors"][0]["detail"]["reason"] == "another request is writing this upload"
    assert resp.headers["Location"] == location
    assert resp.headers["Range"] == f"0-{max(end, 0)}"


async def test_deleting_a_session_while_its_chunk_streams_in(client: TestClient) -> None:
    """The cancellation is refused (the spec lets a client ignore a cancellation's 400): the
    chunk being written is answered as usual and the session cancelled afterwards."""
    resp = await client.post("/v2/app/blobs/uploads/")
    location = resp.headers["Location"]
    first_chunk_sent = asyncio.Event()
    go_on = asyncio.Event()

    # Less than a batch (1 MiB) before the pause: nothing is written yet meanwhile.
    async def body() -> AsyncIterator[bytes]:
        yield b"a" * (256 << 10)
        first_chunk_sent.set()
        await go_on.wait()
        for _ in range(4):
            yield b"b" * (1 << 20)

    patch = asyncio.create_task(client.patch(location, data=body()))
    await first_chunk_sent.wait()
    await until_written(client, location)
    await refused_cancellation(await client.delete(location), location, -1)
    go_on.set()
    resp = await patch
    assert resp.status == 202, await resp.text()
    assert resp.headers["Range"] == f"0-{(256 << 10) + (4 << 20) - 1}"
    assert (await client.delete(location)).status == 204
    # The session is gone for good, with its bytes.
    await spec_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    resp = await client.put(f"{location}?digest={sha256(b'a')}", data=b"")
    await spec_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")
    upload_id = location.rsplit("/", 1)[1]
    assert await client.app[CONTEXT].store.upload_size(upload_id) is None


async def test_deleting_a_session_while_it_is_finished(client: TestClient) -> None:
    """The cancellation cannot take the bytes being committed: refused, the blob stored, and
    the session unknown afterwards."""
    resp = await client.post("/v2/app/blobs/uploads/")
    location = resp.headers["Location"]
    first_chunk_sent = asyncio.Event()
    go_on = asyncio.Event()
    data = b"c" * (3 << 20)

    async def body() -> AsyncIterator[bytes]:
        yield data[: 256 << 10]
        first_chunk_sent.set()
        await go_on.wait()
        yield data[256 << 10 :]

    put = asyncio.create_task(client.put(f"{location}?digest={sha256(data)}", data=body()))
    await first_chunk_sent.wait()
    await until_written(client, location)
    await refused_cancellation(await client.delete(location), location, -1)
    go_on.set()
    resp = await put
    assert resp.status == 201, await resp.text()
    blob = await client.get(f"/v2/app/blobs/{sha256(data)}")
    assert blob.status == 200
    assert await blob.read() == data
    await spec_error(await client.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")


# -- raw HTTP: header sizes, bytes that are not UTF-8, clients that never finish -------------


def raw_request(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send `request` bytes on a fresh connection; return the whole answer (every request here
    asks for, or provokes, the connection's close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may answer and close before reading everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


CLOSE = b"Connection: close\r\n"
RAW_REQUESTS = {
    "20 kB header": b"GET /v2/app/tags/list HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"a" * 20000
    + b"\r\n\r\n",
    "20 kB path": b"GET /v2/" + b"a" * 20000 + b"/tags/list HTTP/1.1\r\nHost: x\r\n\r\n",
    "500 headers": b"GET /v2/app/tags/list HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: y\r\n" % i for i in range(500))
    + b"\r\n",
    "raw arabic n": b"GET /v2/app/tags/list?n=\xd9\xa3 HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "raw byte n": b"GET /v2/app/tags/list?n=\xff HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "encoded newline": b"GET /v2/%0A/blobs/v1 HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "raw bytes name": b"GET /v2/\xff\xfe/tags/list HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n",
    "raw range": b"GET /v2/app/blobs/sha256:" + b"a" * 64 + b" HTTP/1.1\r\nHost: x\r\n"
    b"Range: bytes=\xd9\xa3-\r\n" + CLOSE + b"\r\n",
    "raw authorization": b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \xff\xfe\r\n"
    + CLOSE
    + b"\r\n",
    "raw bearer": b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe.\xc2\xb2\r\n"
    + CLOSE
    + b"\r\n",
    "raw basic user": b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
    + __import__("base64").b64encode(b"\xff\xfe:\xc2")
    + b"\r\n"
    + CLOSE
    + b"\r\n",
    "expect byte": b"GET /v2/nope/tags/list HTTP/1.1\r\nHost: x\r\nExpect: \x80\r\n"
    + CLOSE
    + b"\r\n",
    "expect unknown": b"PUT /v2/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n"
    b"Content-Length: 2\r\n" + CLOSE + b"\r\n{}",
    "raw webhook signature": b"POST /api/v1/scans HTTP/1.1\r\nHost: x\r\n"
    b"Trustyard-Timestamp: " + str(int(time.time())).encode() + b"\r\n"
    b"Trustyard-Signature: sha256=\xff\xfe\r\nContent-Length: 2\r\n" + CLOSE + b"\r\n{}",
    "raw webhook scanner": b"POST /api/v1/scans HTTP/1.1\r\nHost: x\r\n"
    b"Trustyard-Scanner: \xff\r\nTrustyard-Timestamp: 1\r\nTrustyard-Signature: x\r\n"
    b"Content-Length: 2\r\n" + CLOSE + b"\r\n{}",
    "raw webhook bearer": b"POST /api/v1/scans HTTP/1.1\r\nHost: x\r\n"
    b"Authorization: Bearer \xff\xfe\r\nContent-Length: 2\r\n" + CLOSE + b"\r\n{}",
    "raw webhook headers": b"POST /api/v1/scans HTTP/1.1\r\nHost: x\r\n"
    b"Trustyard-Timestamp: \xc2\xb2\r\nTrustyard-Signature: sha256=\xff\r\n"
    b"Content-Length: 2\r\n" + CLOSE + b"\r\n{}",
    "raw content-range": b"PATCH /v2/app/blobs/uploads/" + b"0" * 32 + b" HTTP/1.1\r\nHost: x\r\n"
    b"Content-Range: \xd9\xa3-4\r\nContent-Length: 4\r\n" + CLOSE + b"\r\nabcd",
    "5000-digit content-length": b"GET /v2/app/tags/list HTTP/1.1\r\nHost: x\r\nContent-Length: "
    + b"9" * 5000
    + b"\r\n\r\n",
    "arabic content-length": b"GET /v2/app/tags/list HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: \xd9\xa3\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", list(RAW_REQUESTS.values()), ids=list(RAW_REQUESTS))
async def test_raw_requests_never_500(start_client: Any, request_bytes: bytes) -> None:
    """Bytes no HTTP parser accepts get aiohttp's own 400/431 and a closed connection; what it
    parses reaches the registry, which answers 4xx with the spec's error body."""
    served = await start_client(scanners=SCANNERS, auth={"service": "t", "permissions": []})
    answer = await asyncio.to_thread(raw_request, served.server.port, request_bytes)
    status = status_of(answer)
    assert 400 <= status < 500, answer[:300]
    head, _, body = answer.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1"):  # answered by the registry, not by the HTTP parser
        assert b"application/json" in head, head
        assert json.loads(body)["errors"][0]["code"], body


def test_a_client_trickling_headers_is_cut_off(tmp_path: Path) -> None:
    """A client that sends a header byte now and then, forever, loses its connection once the
    idle timeout passes, and other clients are served meanwhile."""
    server = start_registry(tmp_path / "data", env={"TRUSTYARD_IDLE_TIMEOUT": "2s"})
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 30:
                try:
                    sock.sendall(b"X")
                    sock.settimeout(0.25)
                    if sock.recv(1024) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
            elapsed = time.monotonic() - started
        assert closed, "the server kept a trickling connection open for 30 s"
        assert 1.5 <= elapsed < 15, elapsed
    finally:
        server.stop()


@pytest.mark.parametrize("port", ["²", "٣", "5_000", "+5000", "9" * 5000])
def test_listen_port_must_be_ascii_digits(port: str) -> None:
    with pytest.raises(ConfigError, match="listen: expected HOST:PORT"):
        load_config(environ={}, overrides={"listen": f"127.0.0.1:{port}"})


async def test_a_nul_in_last_ends_the_key(client: TestClient) -> None:
    """No tag holds a NUL: the page after `a\\x00…` is the page after `a`, on every backend."""
    for tag in ("a", "a0", "b"):
        await push_image(client, "app", tag)
    for last, expected in (("a%00zz", ["a0", "b"]), ("%00", ["a", "a0", "b"]), ("a", ["a0", "b"])):
        resp = await client.get(f"/v2/app/tags/list?last={last}")
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["tags"] == expected
