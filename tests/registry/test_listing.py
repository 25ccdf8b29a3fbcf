"""Spec: "Listing tags" with `n`, `last` and `Link`; the `_catalog` extension likewise."""

from __future__ import annotations

import pytest

from tests.oci import error_codes, push_image


async def test_tags_are_listed_in_lexical_order_with_pagination(client):
    for tag in ("v3", "v1", "latest", "v2"):
        await push_image(client, "repo", tag)
    everything = await client.get("/v2/repo/tags/list")
    assert await everything.json() == {"name": "repo", "tags": ["latest", "v1", "v2", "v3"]}
    assert "Link" not in everything.headers

    first = await client.get("/v2/repo/tags/list", params={"n": "2"})
    assert (await first.json())["tags"] == ["latest", "v1"]
    assert first.headers["Link"] == '</v2/repo/tags/list?n=2&last=v1>; rel="next"'

    second = await client.get("/v2/repo/tags/list", params={"n": "2", "last": "v1"})
    assert (await second.json())["tags"] == ["v2", "v3"]
    assert "Link" not in second.headers

    zero = await client.get("/v2/repo/tags/list", params={"n": "0"})
    assert (await zero.json())["tags"] == []


@pytest.mark.parametrize("n", ["-1", "abc", "1.5"])
async def test_bad_page_size_is_pagination_number_invalid(client, n):
    await push_image(client, "repo", "v1")
    resp = await client.get("/v2/repo/tags/list", params={"n": n})
    assert resp.status == 400
    assert error_codes(await resp.json()) == ["PAGINATION_NUMBER_INVALID"]
    catalog = await client.get("/v2/_catalog", params={"n": n})
    assert catalog.status == 400


async def test_tags_of_unknown_repository_is_name_unknown(client):
    resp = await client.get("/v2/nobody/tags/list")
    assert resp.status == 404
    assert error_codes(await resp.json()) == ["NAME_UNKNOWN"]


async def test_catalog_lists_repositories_with_pagination(client):
    for name in ("b/two", "a/one", "c"):
        await push_image(client, name, "v1")
    everything = await client.get("/v2/_catalog")
    assert await everything.json() == {"repositories": ["a/one", "b/two", "c"]}
    page = await client.get("/v2/_catalog", params={"n": "1", "last": "a/one"})
    assert (await page.json())["repositories"] == ["b/two"]
    assert page.headers["Link"] == '</v2/_catalog?n=1&last=b%2Ftwo>; rel="next"'
