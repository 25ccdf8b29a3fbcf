"""A NUL character (`\\u0000` in JSON) in any field of a pushed manifest or image config gets the
same answer on SQLite and PostgreSQL, never a 500: a field stored as text is refused with 400
TEXT_INVALID on both (PostgreSQL's text cannot hold a NUL; SQLite's could, so the same push was
stored on one backend and refused on the other), a field kept only inside the stored JSON
document is stored, escaped, on both — and read back byte for byte.

An attacker with push rights tries each field a registry records: the artifact type, the
annotations (keys, values, the base image's name), the config's media type, an index's platform,
the image config's labels, and the subject.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from storage.layout import DataLayout
from storage.metadata import DecisionRecord, open_metadata
from tests.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    push_blob,
    push_image,
)
from tests.scans.conftest import SCANNERS, bearer

NUL = "\x00"

Build = Callable[[TestClient], Any]


async def image(
    client: TestClient,
    *,
    config: dict[str, Any] | None = None,
    config_type: str = OCI_CONFIG,
    **fields: Any,
) -> dict[str, Any]:
    """An image manifest (with `fields`) whose config and layer are pushed."""
    config_bytes = json.dumps(config or {"os": "linux", "architecture": "amd64"}).encode()
    layer = b"nul-layer"
    await push_blob(client, "team/app", config_bytes)
    await push_blob(client, "team/app", layer)
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config_type, config_bytes),
        "layers": [descriptor(OCI_LAYER, layer)],
        **fields,
    }


async def index_with_platform(client: TestClient) -> dict[str, Any]:
    child = json.dumps(await image(client), separators=(",", ":")).encode()
    resp = await client.put(
        "/v2/team/app/manifests/child", data=child, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201, await resp.text()
    entry = descriptor(OCI_MANIFEST, child, platform={"os": f"li{NUL}nux", "architecture": "amd64"})
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}


#: name -> (how the document is built, its media type).
CASES: dict[str, tuple[Callable[[TestClient], Any], str]] = {
    "artifact type": (lambda c: image(c, artifactType=f"application/x{NUL}y"), OCI_MANIFEST),
    "annotation value": (lambda c: image(c, annotations={"note": f"a{NUL}b"}), OCI_MANIFEST),
    "annotation key": (lambda c: image(c, annotations={f"no{NUL}te": "ab"}), OCI_MANIFEST),
    "base image name": (
        lambda c: image(
            c,
            annotations={
                "org.opencontainers.image.base.name": f"docker.io/library/alpine{NUL}:3",
                "org.opencontainers.image.base.digest": "sha256:" + "b" * 64,
            },
        ),
        OCI_MANIFEST,
    ),
    "config media type": (
        lambda c: image(c, config_type=f"application/vnd.oci.image.config.v1+json{NUL}"),
        OCI_MANIFEST,
    ),
    "config labels": (
        lambda c: image(
            c,
            config={
                "os": "linux",
                "architecture": "amd64",
                "config": {"Labels": {f"ba{NUL}se": f"alpine{NUL}"}},
            },
        ),
        OCI_MANIFEST,
    ),
    "config os": (
        lambda c: image(c, config={"os": f"li{NUL}nux", "architecture": "amd64"}),
        OCI_MANIFEST,
    ),
    "index platform": (index_with_platform, OCI_INDEX),
    "subject": (
        lambda c: image(
            c, subject={"mediaType": OCI_MANIFEST, "digest": f"sha256:{NUL}", "size": 2}
        ),
        OCI_MANIFEST,
    ),
}


async def answer(client: TestClient, case: str) -> tuple[int, list[str], str | None, int]:
    """Push the case's document as tag `case`: status, error codes, first message, and the
    status of reading the tag back (the bytes compared when stored)."""
    build, media_type = CASES[case]
    content = json.dumps(await build(client)).encode()
    tag = case.replace(" ", "-")
    resp = await client.put(
        f"/v2/team/app/manifests/{tag}", data=content, headers={"Content-Type": media_type}
    )
    body = await resp.read()
    assert resp.status < 500, (case, resp.status, body[:300])
    codes, message = [], None
    if resp.status >= 400:
        errors = json.loads(body)["errors"]
        codes, message = [e["code"] for e in errors], errors[0]["message"]
    read = await client.get(f"/v2/team/app/manifests/{tag}", headers={"Accept": media_type})
    if read.status == 200:
        assert resp.status == 201, case
        assert await read.read() == content, case
    return resp.status, codes, message, read.status


async def test_a_nul_in_any_pushed_field_is_answered_alike_on_both_backends(
    start_client: Any, postgres_url: str
) -> None:
    sqlite = await start_client()
    postgresql = await start_client(metadata=postgres_url)
    on_sqlite = {case: await answer(sqlite, case) for case in CASES}
    on_postgresql = {case: await answer(postgresql, case) for case in CASES}
    assert on_sqlite == on_postgresql
    for case, (status, codes, message, read) in on_sqlite.items():
        if status == 201:
            assert read == 200, case
            continue
        assert 400 <= status < 500 and read == 404, (case, status, read)
        if codes == ["TEXT_INVALID"]:
            assert message == "a value holds a NUL character, which no name, tag or field can hold"
    # After every refusal, a clean push goes through on both (nothing half stored, no poisoned
    # batch).
    for client in (sqlite, postgresql):
        content = json.dumps(await image(client)).encode()
        resp = await client.put(
            "/v2/team/app/manifests/clean", data=content, headers={"Content-Type": OCI_MANIFEST}
        )
        assert resp.status == 201, await resp.text()


#: A generic scan report's fields a scanner (or whoever holds its credentials) chooses.
SCAN_FIELDS: dict[str, dict[str, Any]] = {
    "finding id": {"id": f"CVE-{NUL}1"},
    "package": {"package": f"musl{NUL}"},
    "installed version": {"installed": f"1.2{NUL}"},
    "fixed version": {"fixed": f"1.3{NUL}"},
    "title": {"title": f"overflow{NUL}"},
}


def scan_report(finding: dict[str, Any], scanner: str = "grype") -> bytes:
    base = {"id": "CVE-1", "severity": "high", "package": "musl", "installed": "1.2"}
    return json.dumps(
        {
            "format": "trustyard.scan.v1",
            "scanner": {"name": scanner, "version": "0.80.0"},
            "findings": [{**base, **finding}],
        }
    ).encode()


async def scan_answers(client: TestClient) -> dict[str, tuple[int, list[str]]]:
    digest, _ = await push_image(client, "team/scanned", "v1")
    bodies = {name: scan_report(field) for name, field in SCAN_FIELDS.items()}
    bodies["scanner name"] = scan_report({}, scanner=f"gr{NUL}ype")
    answers = {}
    for name, body in bodies.items():
        resp = await client.post(f"/api/v1/scans?digest={digest}", data=body, headers=bearer())
        text = await resp.text()
        assert resp.status < 500, (name, resp.status, text[:300])
        codes = [e["code"] for e in json.loads(text)["errors"]] if resp.status >= 400 else []
        answers[name] = (resp.status, codes)
    # Whatever was refused left no report behind; a clean report is stored.
    resp = await client.post(
        f"/api/v1/scans?digest={digest}", data=scan_report({}), headers=bearer()
    )
    assert resp.status == 201, await resp.text()
    resp = await client.get(f"/api/v1/scans/{digest}")
    reports = (await resp.json())["reports"]
    assert [[f["id"] for f in r["findings"]] for r in reports] == [["CVE-1"]]
    return answers


async def test_a_nul_in_a_scan_report_is_answered_alike_on_both_backends(
    start_client: Any, postgres_url: str
) -> None:
    sqlite = await start_client(scanners=SCANNERS)
    postgresql = await start_client(scanners=SCANNERS, metadata=postgres_url)
    on_sqlite, on_postgresql = await scan_answers(sqlite), await scan_answers(postgresql)
    assert on_sqlite == on_postgresql
    for name, (status, codes) in on_sqlite.items():
        if name == "title":  # kept only inside the report's JSON document, escaped
            assert status == 201
            continue
        assert status == 400 and codes in (["TEXT_INVALID"], ["SCAN_INVALID"]), (name, codes)


async def test_a_decision_quoting_a_nul_is_logged_escaped_on_both_backends(
    data_dir: Path, backend_url: str | None
) -> None:
    """A decision's reason may quote what a push carried: its NUL is logged as `\\0`, and the
    decisions written with it in one batch are kept (else the whole batch failed at every
    flush, and the log stopped)."""
    db = await open_metadata(DataLayout(data_dir).database, backend_url)
    try:
        now = time.time()
        quoting = DecisionRecord(
            now,
            "alice",
            "push",
            "team/app",
            "v1",
            "sha256:" + "a" * 64,
            "deny",
            "base",
            f"base image docker.io/alpine{NUL}:3 is not allowed",
            "v" * 8,
        )
        plain = DecisionRecord(
            now,
            "bob",
            "pull",
            "team/app",
            "v1",
            "sha256:" + "a" * 64,
            "allow",
            None,
            "ok",
            "v" * 8,
        )
        await db.record_decisions([quoting, plain])
        logged = await db.list_decisions()
        assert sorted((d.identity, d.reason) for d in logged) == [
            ("alice", "base image docker.io/alpine\\0:3 is not allowed"),
            ("bob", "ok"),
        ]
    finally:
        await db.close()
