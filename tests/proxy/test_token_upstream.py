"""A second Trustyard with token auth as the upstream: the Docker token flow (Bearer challenge,
a token per scope from the realm, cached until it expires), with credentials and anonymously."""

from __future__ import annotations

import re
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from registry.app import create_app
from registry.proxy.routing import PROXY
from tests.auth.conftest import PASSWORDS, auth_section, basic, write_accounts
from tests.conftest import make_config
from tests.oci import error_codes
from tests.proxy.upstreams import Upstream, random_layer, sha256

_TOKENS = re.compile(
    r'trustyard_http_requests_total\{method="GET",route="/token",status="200"\} (\d+)'
)


@pytest.fixture
async def token_upstream(tmp_path: Path):
    """A Trustyard with auth on (alice pushes team-a/**, anonymous pulls library/**)."""
    data = tmp_path / "upstream-data"
    write_accounts(data)
    server = TestServer(create_app(make_config(data, auth=auth_section())), host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def url_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def bearer_for(server: TestServer, scope: str, user: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            server.make_url("/token"),
            params={"service": "trustyard-test", "scope": scope},
            headers={"Authorization": basic(user, PASSWORDS[user])},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return "Bearer " + (await resp.json())["token"]


async def tokens_issued(server: TestServer) -> int:
    """Tokens the upstream issued, from its own /metrics (read as the admin olga)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            server.make_url("/metrics"), headers={"Authorization": basic("olga", PASSWORDS["olga"])}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return sum(int(n) for n in _TOKENS.findall(await resp.text()))


def config(server: TestServer, user: str | None, folder: Path | None = None) -> dict:
    item = {"name": "ty", "url": url_of(server), "prefix": "ty.test"}
    if user is not None and folder is not None:
        secret = folder / "upstream-password"
        secret.write_text(PASSWORDS[user] + "\n")
        item |= {"username": user, "password_file": str(secret)}
    return {"upstreams": [item]}


async def test_token_flow_with_credentials_fetches_one_token_per_scope(
    start_client, token_upstream, tmp_path
):
    for name in ("team-a/app", "library/base"):
        push = Upstream(
            url_of(token_upstream),
            None,
            await bearer_for(token_upstream, f"repository:{name}:pull,push", "alice"),
        )
        if name == "library/base":
            push.authorization = await bearer_for(
                token_upstream, f"repository:{name}:pull,push", "olga"
            )
        layers = [random_layer(100_000), random_layer(1000)]
        await push.push_image(name, "v1", layers)
    client = await start_client(**config(token_upstream, "alice", tmp_path))
    before = await tokens_issued(token_upstream)

    manifest = await client.get("/v2/ty.test/team-a/app/manifests/v1")
    assert manifest.status == 200, await manifest.text()
    for layer in (await manifest.json())["layers"]:
        blob = await client.get(f"/v2/ty.test/team-a/app/blobs/{layer['digest']}")
        assert blob.status == 200
        assert sha256(await blob.read()) == layer["digest"]
    # Manifest, signatures looked for, config, two layers: one token for the scope, cached.
    assert await tokens_issued(token_upstream) - before == 1

    # Another repository is another scope: a token of its own.
    other = await client.get("/v2/ty.test/library/base/manifests/v1")
    assert other.status == 200
    assert await tokens_issued(token_upstream) - before == 2


async def test_anonymous_token_flow_and_a_scope_the_upstream_refuses(start_client, token_upstream):
    push = Upstream(
        url_of(token_upstream),
        None,
        await bearer_for(token_upstream, "repository:library/base:pull,push", "olga"),
    )
    await push.push_image("library/base", "v1", [b"base layer"])
    push.authorization = await bearer_for(
        token_upstream, "repository:team-a/secret:pull,push", "olga"
    )
    await push.push_image("team-a/secret", "v1", [b"secret layer"])
    client = await start_client(**config(token_upstream, None))

    public = await client.get("/v2/ty.test/library/base/manifests/v1")
    assert public.status == 200, await public.text()

    # Anonymous may not pull team-a: the upstream's refusal is not served as content.
    secret = await client.get("/v2/ty.test/team-a/secret/manifests/v1")
    assert secret.status == 503
    body = await secret.json()
    assert error_codes(body) == ["UNAVAILABLE"]
    assert "upstream ty" in body["errors"][0]["message"]


async def test_a_token_is_fetched_again_once_it_expires(start_client, token_upstream, tmp_path):
    push = Upstream(
        url_of(token_upstream),
        None,
        await bearer_for(token_upstream, "repository:team-a/app:pull,push", "alice"),
    )
    await push.push_image("team-a/app", "v1", [b"one"])
    await push.push_image("team-a/app", "v2", [b"two"])
    client = await start_client(**config(token_upstream, "alice", tmp_path))
    before = await tokens_issued(token_upstream)
    assert (await client.get("/v2/ty.test/team-a/app/manifests/v1")).status == 200
    assert await tokens_issued(token_upstream) - before == 1
    # The cached token's lifetime is over (it expired a second ago): the next request in the
    # same scope asks the realm again instead of sending it.
    upstream_client = client.app[PROXY].clients["ty"]
    for scope, (token, _) in list(upstream_client._tokens.items()):
        upstream_client._tokens[scope] = (token, time.time() - 1)
    assert (await client.get("/v2/ty.test/team-a/app/manifests/v2")).status == 200
    assert await tokens_issued(token_upstream) - before == 2
