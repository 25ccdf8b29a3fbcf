"""Spec: "Determining support" (GET /v2/), the name grammar, unknown endpoints and methods."""

from __future__ import annotations

import pytest
from yarl import URL

from tests.oci import error_codes


async def test_api_base_answers_with_version_header(client):
    resp = await client.get("/v2/")
    assert resp.status == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert await resp.json() == {}


@pytest.mark.parametrize(
    "name",
    ["UPPER/case", "a/../b", "-leading", "trailing-", "a//b", "a" * 256, "x/" * 130 + "y"],
)
async def test_invalid_repository_names_are_refused_before_storage(client, name):
    # encoded=True: send the path as written, without the client resolving `..`.
    url = client.make_url("/").with_path(f"/v2/{name}/tags/list", encoded=True)
    resp = await client.session.get(URL(str(url), encoded=True))
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["NAME_INVALID"]


async def test_unknown_endpoint_is_a_json_404(client):
    resp = await client.get("/v2/a/b/whatever")
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["code"] == "UNSUPPORTED"


async def test_method_not_allowed_answers_unsupported_with_allow(client):
    resp = await client.post("/v2/a/manifests/latest")
    assert resp.status == 405
    assert error_codes(await resp.json()) == ["UNSUPPORTED"]
    assert "PUT" in resp.headers["Allow"]


async def test_error_bodies_carry_the_api_version_header(client):
    resp = await client.get("/v2/nothing/here/manifests/latest")
    assert resp.status == 404
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert error_codes(await resp.json()) == ["NAME_UNKNOWN"]
