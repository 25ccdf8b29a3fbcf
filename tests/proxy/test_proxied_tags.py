"""`GET /v2/<proxied>/tags/list` lists the upstream's tags (not only the cached ones), paginated
as the spec says (`n`, `last`, `Link`, lexical order, whatever order the upstream lists in),
only tags of the spec's grammar; when the upstream is down, the cached tags with a
`Warning`."""

from __future__ import annotations

import json

import pytest
from yarl import URL

from registry.proxy.tags import _next_path
from tests.proxy.upstreams import proxy_config, random_layer

TAGS = ["1.0", "1.1", "2.0", "latest", "v5"]


@pytest.fixture
async def mirrored(start_client, front, upstream):
    for tag in TAGS:
        await upstream.push_image("team/app", tag, [random_layer(1000)])
    client = await start_client(**proxy_config(front.url, None))
    pulled = await client.get("/v2/mirror.test/team/app/manifests/1.0")  # only one cached
    assert pulled.status == 200
    return client


async def test_the_upstreams_tags_are_listed(mirrored, front):
    resp = await mirrored.get("/v2/mirror.test/team/app/tags/list")
    assert resp.status == 200
    assert await resp.json() == {"name": "mirror.test/team/app", "tags": TAGS}
    assert "Link" not in resp.headers and "Warning" not in resp.headers
    # Kept for the manifest TTL: listing again (or paging) asks the upstream nothing.
    again = await mirrored.get("/v2/mirror.test/team/app/tags/list?n=1")
    assert (await again.json())["tags"] == ["1.0"]
    assert front.requests[("GET", "/v2/team/app/tags/list")] == 1


async def test_pages_follow_the_link_header(mirrored):
    seen, path, links = [], "/v2/mirror.test/team/app/tags/list?n=2", []
    while path:
        assert len(links) < 10, links
        resp = await mirrored.get(path)
        assert resp.status == 200
        body = await resp.json()
        assert body["name"] == "mirror.test/team/app" and len(body["tags"]) <= 2
        seen += body["tags"]
        link = resp.headers.get("Link")
        links.append(link)
        path = link.split(">", 1)[0].lstrip("<") if link else ""
    assert seen == TAGS
    assert links == [
        '</v2/mirror.test/team/app/tags/list?n=2&last=1.1>; rel="next"',
        '</v2/mirror.test/team/app/tags/list?n=2&last=latest>; rel="next"',
        None,
    ]
    after = await mirrored.get("/v2/mirror.test/team/app/tags/list?last=2.0")
    assert (await after.json())["tags"] == ["latest", "v5"]
    none = await mirrored.get("/v2/mirror.test/team/app/tags/list?n=0")
    assert (await none.json())["tags"] == []


async def test_upstream_down_lists_the_cached_tags_with_a_warning(mirrored, front):
    front.down = True
    resp = await mirrored.get("/v2/mirror.test/team/app/tags/list")
    assert resp.status == 200
    assert await resp.json() == {"name": "mirror.test/team/app", "tags": ["1.0"]}
    assert resp.headers["Warning"] == (
        '110 trustyard "Response is Stale: answered 503; only the tags cached here are listed"'
    )
    # Nothing cached and the upstream down: the upstream's failure, not an empty list.
    uncached = await mirrored.get("/v2/mirror.test/team/never/tags/list")
    assert uncached.status == 503
    body = await uncached.json()
    assert body["errors"][0]["code"] == "UNAVAILABLE"
    assert body["errors"][0]["message"].endswith(
        "answered 503; no tag of mirror.test/team/never is cached"
    )


async def test_a_repository_the_upstream_does_not_have_is_unknown(mirrored):
    resp = await mirrored.get("/v2/mirror.test/team/nothing/tags/list")
    assert resp.status == 404
    body = await resp.json()
    assert body["errors"][0]["code"] == "NAME_UNKNOWN"
    assert body["errors"][0]["message"] == "repository team/nothing unknown to upstream ref"


@pytest.mark.parametrize(
    ("served", "listed"),
    [
        # Names outside the tag grammar (a path, a header break, a non-string) are dropped.
        (
            {"name": "x", "tags": ["ok", "../../etc", "v1\r\nSet-Cookie: a=b", 5, "-dash"]},
            ["ok"],
        ),
        ({"name": "x", "tags": None}, []),
    ],
)
async def test_only_tags_of_the_grammar_are_listed(mirrored, front, served, listed):
    front.swap["list"] = json.dumps(served).encode()
    resp = await mirrored.get("/v2/mirror.test/team/app/tags/list")
    assert resp.status == 200
    assert await resp.json() == {"name": "mirror.test/team/app", "tags": listed}


async def test_a_tag_list_that_is_not_one_falls_back_to_the_cache(mirrored, front):
    front.swap["list"] = b"<html>rate limit page</html>"
    resp = await mirrored.get("/v2/mirror.test/team/app/tags/list")
    assert resp.status == 200
    assert (await resp.json())["tags"] == ["1.0"]
    assert "answered no JSON tag list" in resp.headers["Warning"]


@pytest.mark.parametrize(
    ("url", "followed"),
    [
        ("/v2/team/app/tags/list?last=b&n=2", "tags/list?last=b&n=2"),
        # Elsewhere: another host, another repository, no cursor.
        ("https://evil.example/v2/team/app/tags/list?last=b", None),
        ("/v2/team/other/tags/list?last=b", None),
        ("/v2/team/app/tags/list", None),
    ],
)
def test_only_a_next_link_to_the_same_list_is_followed(url, followed):
    assert _next_path({"url": URL(url)}, "team/app") == followed
