"""A NUL (`%00`) in any path or query parameter never costs a 500, on either metadata backend.

PostgreSQL's text cannot hold a NUL at all (SQLite's can), so a value with one that reached a
statement used to fail there. Every parameter of every route is tried with a NUL inside a value
that is otherwise well formed; the answer is a spec error (4xx, with its code) or, where the
value only filters a listing, an empty or unaffected page: the same on both backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from storage.errors import TextNotStorable
from storage.metadata import ManifestRecord, open_metadata
from tests.oci import OCI_MANIFEST, push_image

DIGEST = "sha256:" + "a" * 64
NUL_DIGEST = "sha256:" + "a" * 30 + "%00" + "a" * 33

#: (method, path) with `{}` where the NUL-bearing value goes, one request per parameter.
PATHS: list[tuple[str, str]] = [
    ("GET", "/v2/te%00am/app/manifests/v1"),
    ("GET", "/v2/team/app/manifests/v%001"),
    ("GET", f"/v2/team/app/manifests/{NUL_DIGEST}"),
    ("HEAD", "/v2/team/app/manifests/v%001"),
    ("PUT", "/v2/team/app/manifests/v%001"),
    ("DELETE", "/v2/team/app/manifests/v%001"),
    ("DELETE", f"/v2/team/app/manifests/{NUL_DIGEST}"),
    ("GET", f"/v2/team/app/blobs/{NUL_DIGEST}"),
    ("HEAD", f"/v2/te%00am/app/blobs/{DIGEST}"),
    ("DELETE", f"/v2/team/app/blobs/{NUL_DIGEST}"),
    ("GET", "/v2/team/app/tags/list?last=v%001"),
    ("GET", "/v2/team/app/tags/list?n=1%00"),
    ("GET", "/v2/te%00am/app/tags/list"),
    ("GET", "/v2/_catalog?last=team%00"),
    ("GET", "/v2/_catalog?n=%001"),
    ("GET", f"/v2/team/app/referrers/{NUL_DIGEST}"),
    ("GET", f"/v2/team/app/referrers/{DIGEST}?artifactType=application/x%00y"),
    ("POST", "/v2/te%00am/app/blobs/uploads/"),
    ("POST", f"/v2/team/app/blobs/uploads/?digest={NUL_DIGEST}"),
    ("POST", f"/v2/team/app/blobs/uploads/?mount={NUL_DIGEST}&from=other/app"),
    ("POST", f"/v2/team/app/blobs/uploads/?mount={DIGEST}&from=oth%00er/app"),
    ("GET", "/v2/team/app/blobs/uploads/0123456789abcdef0123456789abc%00ef"),
    ("PATCH", "/v2/team/app/blobs/uploads/0123456789abcdef0123456789abc%00ef"),
    ("PUT", f"/v2/team/app/blobs/uploads/0123456789abcdef0123456789abcdef?digest={NUL_DIGEST}"),
    ("DELETE", "/v2/team/app/blobs/uploads/0123456789abcdef0123456789abc%00ef"),
    ("GET", "/api/v1/images/te%00am/app/v1/status"),
    ("GET", "/api/v1/images/team/app/v%001/status"),
    ("GET", "/api/v1/library/py%00thon/3.12/consumers"),
    ("GET", "/api/v1/library/python/3.%0012/consumers"),
    ("GET", f"/api/v1/scans/{NUL_DIGEST}"),
    ("GET", "/api/v1/repositories/te%00am/app/tags"),
    ("GET", "/api/v1/repositories/team/app/manifests/v%001"),
    ("GET", "/api/v1/repositories?prefix=te%00am"),
    ("GET", "/api/v1/repositories?last=te%00am"),
    ("GET", "/api/v1/repositories/team/app/tags?last=v%001"),
    ("GET", "/api/v1/quarantine?repository=te%00am/app"),
    ("GET", "/api/v1/quarantine?last=te%00am"),
    ("GET", "/api/v1/library/stale?last=x%00"),
    ("GET", "/api/v1/events/deliveries?endpoint=ho%00ok"),
    ("GET", "/api/v1/events/deliveries?state=pen%00ding"),
    ("GET", "/console/repositories/te%00am/app"),
    ("GET", "/console/repositories/team/app/-/v%001"),
    ("GET", "/console/repositories?prefix=te%00am"),
    ("GET", "/console/decisions?repository=te%00am/app"),
    ("GET", "/console/quarantine?repository=te%00am"),
    ("GET", "/v2/team%00"),
]

#: The decision log's filters, each with a NUL.
DECISION_FILTERS = [
    "repository",
    "identity",
    "action",
    "outcome",
    "rule",
    "reference",
    "digest",
    "since",
    "until",
    "last",
    "n",
    "format",
]


def _all_requests() -> list[tuple[str, str]]:
    requests = list(PATHS)
    for name in DECISION_FILTERS:
        requests.append(("GET", f"/api/v1/decisions?{name}=x%00y"))
        requests.append(("GET", f"/api/v1/decisions/summary?{name}=x%00y"))
        requests.append(("GET", f"/console/decisions?{name}=x%00y"))
    for name in ("window", "buckets", "since", "until", "repository"):
        requests.append(("GET", f"/api/v1/decisions/summary?{name}=1%00"))
    return requests


async def answers(client: TestClient) -> dict[tuple[str, str], int]:
    """Each request's status; no 5xx, and a spec error body with every refusal."""
    statuses = {}
    for method, path in _all_requests():
        data = b"{}" if method in ("PUT", "PATCH") else None
        resp = await client.request(method, path, data=data)
        body = await resp.read()
        assert resp.status < 500, (method, path, resp.status, body[:300])
        if resp.status >= 400 and path.startswith(("/v2/", "/api/")) and method != "HEAD":
            errors = json.loads(body)["errors"]
            assert errors and errors[0]["code"], (method, path, body)
        statuses[(method, path)] = resp.status
    return statuses


async def test_no_parameter_with_a_nul_costs_a_500_and_both_backends_answer_alike(
    start_client: Any, postgres_url: str
) -> None:
    sqlite = await start_client()
    postgresql = await start_client(metadata=postgres_url)  # the same blob store
    for client in (sqlite, postgresql):
        await push_image(client, "team/app", "v1")
    on_sqlite, on_postgresql = await answers(sqlite), await answers(postgresql)
    assert {k: (v, on_postgresql[k]) for k, v in on_sqlite.items() if v != on_postgresql[k]} == {}
    # Trustyard's own API refuses the value itself, in words.
    resp = await sqlite.get("/api/v1/decisions?identity=x%00y")
    assert resp.status == 400
    assert (await resp.json())["errors"][0] == {
        "code": "QUERY_INVALID",
        "message": "identity: no NUL character allowed",
        "detail": {"identity": "x\\0y", "reason": "NUL character"},
    }


async def test_postgresql_refuses_a_nul_in_any_statement_parameter(postgres_url: str) -> None:
    """Below the HTTP floor too: whatever value reaches a statement, read or write, a NUL is
    refused before PostgreSQL sees it (TextNotStorable, answered 400 TEXT_INVALID)."""
    db = await open_metadata(Path("unused"), postgres_url)
    try:
        with pytest.raises(TextNotStorable):
            await db.evidence_version("team\x00app")
        with pytest.raises(TextNotStorable):
            await db.tag_target("team/app", "v\x001")
        record = ManifestRecord("team\x00app", DIGEST, OCI_MANIFEST, b"{}")
        with pytest.raises(TextNotStorable):
            await db.put_manifest(record, [], "v1")
        assert await db.tag_target("team/app", "v1") is None
        assert await db.list_repositories(100, None) == []
    finally:
        await db.close()
