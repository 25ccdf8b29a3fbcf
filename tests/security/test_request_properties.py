"""Property: whatever query string, header values, path or small body a client sends, the
registry never answers 5xx, and every refusal it answers carries the spec's error body (only
bytes the HTTP parser cannot read get aiohttp's own 400/431).

One real Trustyard process (a policy with pull, push and delete rules, an HMAC scanner, one
image pushed) is driven with `http.client`, which sends paths, queries and header bytes as
given.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server_process import RegistryProcess, start_registry

POLICY = """\
version: 1
rules:
  - name: prod images are reviewed
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      annotations: {com.example.reviewed: "^yes$"}
  - name: release tags are immutable
    match: {repositories: ["**"], tags: ["v*"], on: [push, delete]}
    require: {immutable_tags: true}
"""

CONFIG = """\
scanners:
  - name: grype-nightly
    hmac_secret: grype-hmac-secret-0123456789
"""

LAYER = b"property layer"
CONFIG_BLOB = b'{"architecture":"amd64","os":"linux"}'


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _request(
    server: RegistryProcess,
    method: str,
    target: str,
    headers: list[tuple[str, bytes]] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers or []:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body or b"")
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _push_image(server: RegistryProcess, name: str, tag: str) -> None:
    for blob in (CONFIG_BLOB, LAYER):
        status, _, body = _request(
            server, "POST", f"/v2/{name}/blobs/uploads/?digest={_digest(blob)}", body=blob
        )
        assert status == 201, body
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(CONFIG_BLOB),
                "size": len(CONFIG_BLOB),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(LAYER),
                    "size": len(LAYER),
                }
            ],
        }
    ).encode()
    status, _, body = _request(
        server,
        "PUT",
        f"/v2/{name}/manifests/{tag}",
        [("Content-Type", b"application/vnd.oci.image.manifest.v1+json")],
        manifest,
    )
    assert status == 201, body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    root = tmp_path_factory.mktemp("properties")
    (root / "policy.yaml").write_text(POLICY)
    (root / "config.yaml").write_text(CONFIG)
    process = start_registry(
        root / "data",
        extra_args=["--policy", str(root / "policy.yaml"), "--config", str(root / "config.yaml")],
    )
    try:
        _push_image(process, "prod/app", "v1")
        _push_image(process, "open/app", "v1")
        yield process
    finally:
        process.stop()


# -- strategies --------------------------------------------------------------------------------

_TEXT = st.text(max_size=40)
_DIGITS = st.text(alphabet="0123456789٣²\uff11_+- .", max_size=30)
_ALGORITHMS = st.sampled_from(["sha256", "sha512", "md5", "SHA256"])
_DIGESTS = st.sampled_from(
    [_digest(LAYER), _digest(CONFIG_BLOB), "sha256:" + "a" * 64, "sha512:" + "b" * 128]
) | st.builds(lambda a, h: f"{a}:{h}", _ALGORITHMS, _TEXT)
_NAMES = st.sampled_from(["prod/app", "open/app", "nope", "a" * 255, "A", "x/../y", ""]) | _TEXT
_SEGMENTS = st.sampled_from(["v1", "latest", _digest(LAYER)]) | _DIGESTS | _TEXT | _DIGITS
_VALUES = _TEXT | _DIGITS | _DIGESTS | _NAMES
_QUERY_KEYS = st.sampled_from(
    ["n", "last", "digest", "mount", "from", "artifactType", "format", "state", "since",
     "repository", "outcome", "action", "endpoint", "scanner_version"]
) | _TEXT  # fmt: skip
_HEADER_NAMES = st.sampled_from(
    ["Range", "Content-Range", "Content-Type", "Accept", "Authorization", "Trustyard-Timestamp",
     "Trustyard-Signature", "Trustyard-Scanner", "If-None-Match", "If-Range", "Transfer-Encoding",
     "Expect", "Cookie", "X-Forwarded-For"]
)  # fmt: skip
_PREFIXES = st.sampled_from([b"Bearer ", b"Basic ", b"bytes=", b"bytes ", b"sha256=", b"17000"])
_HEADER_VALUES = (
    st.binary(max_size=60)
    | _VALUES.map(lambda t: t.encode("utf-8"))
    | st.builds(lambda p, b: p + b, _PREFIXES, st.binary(max_size=30) | _DIGITS.map(str.encode))
).filter(lambda b: not any(c in b for c in b"\r\n\x00") and b.strip() == b)


def _percent(text: str) -> str:
    return quote(text, safe="")


@st.composite
def _targets(draw: st.DrawFn) -> str:
    """A request target: an API path with odd segments, and an odd query string."""
    name = quote(draw(_NAMES), safe="/")
    segment = _percent(draw(_SEGMENTS))
    path = draw(
        st.sampled_from(
            [
                f"/v2/{name}/blobs/{segment}",
                f"/v2/{name}/manifests/{segment}",
                f"/v2/{name}/tags/list",
                f"/v2/{name}/referrers/{segment}",
                f"/v2/{name}/blobs/uploads/",
                f"/v2/{name}/blobs/uploads/{segment}",
                "/v2/_catalog",
                "/v2/",
                "/api/v1/decisions",
                "/api/v1/scans",
                f"/api/v1/scans/{segment}",
                f"/api/v1/images/{name}/{segment}/status",
                "/api/v1/events/deliveries",
                "/api/v1/library",
            ]
        )
    )
    pairs = draw(st.lists(st.tuples(_QUERY_KEYS, _VALUES), max_size=4))
    raw = draw(st.lists(st.binary(max_size=6), max_size=2))
    query = "&".join(f"{_percent(k)}={_percent(v)}" for k, v in pairs)
    query += "".join(
        "&x=" + "".join(f"%{byte:02x}" for byte in chunk) for chunk in raw
    )  # raw bytes that are not UTF-8
    return f"{path}?{query}" if query else path


_REQUESTS = st.tuples(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
    _targets(),
    st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=4),
    st.none() | st.binary(max_size=64),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
@given(request=_REQUESTS)
def test_no_request_gets_a_5xx(server: RegistryProcess, request: Any) -> None:
    method, target, headers, body = request
    status, answer_headers, answer = _request(server, method, target, headers, body)
    assert status < 500, (method, target, headers, answer[:300])
    if "docker-distribution-api-version" not in answer_headers:
        # Refused by the HTTP parser before the registry saw it (a control byte in a header).
        assert status in (400, 431), (method, target, headers, answer[:300])
        return
    if status >= 400 and method != "HEAD":
        assert answer_headers.get("content-type", "").startswith("application/json"), answer
        errors = json.loads(answer)["errors"]
        assert errors and all(set(e) >= {"code", "message"} for e in errors), answer


def test_the_server_still_serves_after_the_run(server: RegistryProcess) -> None:
    status, _, body = _request(server, "GET", f"/v2/open/app/blobs/{_digest(LAYER)}")
    assert status == 200 and body == LAYER
    # Blob gating is decided per repository: the same layer stays quarantined in prod/app.
    status, _, body = _request(server, "GET", f"/v2/prod/app/blobs/{_digest(LAYER)}")
    assert status == 403 and json.loads(body)["errors"][0]["code"] == "DENIED"
