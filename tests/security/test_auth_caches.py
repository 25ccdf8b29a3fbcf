"""What an attacker tries against the caches on the authenticated hot path: a token kept past its
expiry, a token that differs by one byte from a cached one, a token for another audience, a
removed or demoted account whose token is still cached (in this process or in another one), and
a flood of distinct tokens or repository names to blow the caches' memory. Every refusal is checked
with its status, code and words, and every test first proves the cache was really used."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest
import time_machine
import yaml

from registry.auth.permissions import Permissions, Rule
from registry.auth.scopes import parse_scope
from registry.auth.service import AUTH
from registry.auth.token_cache import MAX_TOKENS
from registry.auth.tokens import ALGORITHM, InvalidToken, TokenAuthority, key_id, load_or_create_key
from registry.auth.users import UserStore
from registry.identity import Identity
from shared.hashing import PIECE
from tests.auth.conftest import (
    PASSWORDS,
    PERMISSIONS,
    Accounts,
    As,
    auth_section,
    basic,
    bearer,
    fetch_token,
    set_groups,
    write_accounts,
)
from tests.oci import descriptor, error_codes, push_image, sha256
from tests.server_process import start_registry

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def authority(
    tmp_path: Path, *, service: str = "svc", ttl: float = 300, skew: float = 30, **kw: Any
):
    key = load_or_create_key(tmp_path / "key.pem", configured=False)
    return TokenAuthority(key, issuer="trustyard", service=service, ttl=ttl, clock_skew=skew, **kw)


def pull(name: str = "team-a/app") -> list:
    return [parse_scope(f"repository:{name}:pull")]


async def refused_token(resp: Any) -> None:
    """A 401 for an invalid token, as clients see it."""
    assert resp.status == 401, await resp.text()
    body = await resp.json()
    assert error_codes(body) == ["UNAUTHORIZED"]
    assert body["errors"][0]["message"] == "invalid or expired token"
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


# -- the token authority's cache -----------------------------------------------------------------


def test_a_verified_token_is_answered_from_the_cache(tmp_path) -> None:
    tokens = authority(tmp_path)
    token = tokens.issue("alice", pull()).token
    first = tokens.verify(token)
    assert (tokens.verified.hits, len(tokens.verified)) == (0, 1)
    assert tokens.verify(token) == first
    assert tokens.verified.hits == 1


def test_a_cached_token_is_refused_once_it_expires(tmp_path) -> None:
    tokens = authority(tmp_path, ttl=60, skew=0)
    # The wall clock is held, then moved past the expiry: however slow the machine, both
    # verifications happen while the token is valid and the next one after it expired.
    held = int(time.time())  # a whole second: the moves below land exactly
    with time_machine.travel(held, tick=False) as clock:
        issued = tokens.issue("alice", pull())
        expires = int(issued.issued_at) + issued.expires_in
        tokens.verify(issued.token)
        clock.shift(expires - 1 - held)  # the last second of its lifetime
        tokens.verify(issued.token)
        assert tokens.verified.hits == 1  # cached, and answered from the cache while valid
        clock.shift(1)  # the expiry itself
        with pytest.raises(InvalidToken, match=r"^Signature has expired$"):
            tokens.verify(issued.token)
        assert tokens.verified.hits == 1 and len(tokens.verified) == 0
        clock.shift(3600)
        with pytest.raises(InvalidToken, match=r"^Signature has expired$"):  # and stays refused
            tokens.verify(issued.token)


def test_the_cache_keeps_the_clock_skew_verification_allows(tmp_path) -> None:
    """A token is cached for exactly the window PyJWT accepts: nbf/iat minus the skew to exp plus
    the skew. Issued 'in the past' so that its exp + skew is only 2 s away."""
    tokens = authority(tmp_path, ttl=60, skew=5)
    # The wall clock is held and moved: a check of "still valid" and the verification after it
    # see the same instant (a slow machine cannot carry the second past the window's end).
    now = int(time.time())  # a whole second: the moves below land exactly
    with time_machine.travel(now, tick=False) as clock:
        issued = tokens.issue("alice", pull(), now=now - 63)  # exp = now - 3, exp + skew = now + 2
        claims = tokens.verify(issued.token)
        entry = tokens.verified._entries[next(iter(tokens.verified._entries))]
        assert entry.valid_until == int(claims.expires_at) + 5
        assert entry.valid_from == int(now - 63) - 5
        hits = tokens.verified.hits
        clock.shift(entry.valid_until - now - 0.001)  # the window's last moment
        tokens.verify(issued.token)  # valid (and cached) until exp + skew
        assert tokens.verified.hits == hits + 1
        clock.shift(0.001)  # exp + skew: the window is closed
        with pytest.raises(InvalidToken, match=r"^Signature has expired$"):
            tokens.verify(issued.token)


def _flip(token: str, position: int) -> str:
    """The token with the base64url character at `position` replaced by another one (in the
    middle of a segment every bit of a character is used: the bytes change)."""
    char = token[position]
    other = "A" if char != "A" else "B"
    return token[:position] + other + token[position + 1 :]


def test_a_token_differing_by_one_byte_from_a_cached_one_is_refused(tmp_path) -> None:
    tokens = authority(tmp_path)
    token = tokens.issue("alice", pull()).token
    tokens.verify(token)
    tokens.verify(token)
    assert tokens.verified.hits == 1
    header, payload, signature = token.split(".")
    variants = {
        "header": _flip(token, len(header) // 2),
        "payload": _flip(token, len(header) + 1 + len(payload) // 2),
        "signature": _flip(token, len(header) + len(payload) + 2 + len(signature) // 2),
        "one more byte": token + "A",
        "one byte less": token[:-1],
        "a space more": token + " ",
    }
    for name, variant in variants.items():
        with pytest.raises(InvalidToken):
            tokens.verify(variant)
        assert tokens.verified.hits == 1, name  # never answered from the original's entry
    assert len(tokens.verified) == 1  # and nothing invalid was cached
    assert tokens.verify(token).subject == "alice"


def test_a_long_token_differing_by_one_byte_anywhere_is_refused(tmp_path) -> None:
    # A push token naming many repositories is several KiB, hashed in pieces for its cache key:
    # a byte changed in any piece (the first, a middle one, the last) is another key.
    tokens = authority(tmp_path)
    scopes = [parse_scope(f"repository:team-a/app{n}:push,pull") for n in range(80)]
    token = tokens.issue("alice", scopes).token
    assert len(token) > 3 * PIECE
    tokens.verify(token)
    for position in (10, PIECE - 1, PIECE, PIECE + 7, 2 * PIECE + 3, len(token) - 40):
        with pytest.raises(InvalidToken):
            tokens.verify(_flip(token, position))
        assert tokens.verified.hits == 0, position
    assert tokens.verify(token).subject == "alice"
    assert tokens.verified.hits == 1


def test_a_token_for_another_audience_is_refused_even_when_cached_elsewhere(tmp_path) -> None:
    ours = authority(tmp_path, service="trustyard-a")
    theirs = authority(tmp_path, service="trustyard-b")  # the same key, another service
    token = theirs.issue("alice", pull()).token
    theirs.verify(token)
    theirs.verify(token)
    assert theirs.verified.hits == 1
    for _ in range(2):  # refused, and not cached as valid by the refusal either
        with pytest.raises(InvalidToken, match=r"^Audience doesn't match$"):
            ours.verify(token)
    assert len(ours.verified) == 0
    # A token signed with our own key but naming another audience: refused each time.
    key = load_or_create_key(tmp_path / "key.pem", configured=True)
    now = int(time.time())
    claims = {"iss": "trustyard", "sub": "olga", "aud": "elsewhere", "iat": now, "nbf": now}
    forged = jwt.encode(
        {**claims, "exp": now + 300}, key, algorithm=ALGORITHM, headers={"kid": key_id(key)}
    )
    for _ in range(2):
        with pytest.raises(InvalidToken, match=r"^Audience doesn't match$"):
            ours.verify(forged)
    assert len(ours.verified) == 0


def test_a_token_not_yet_valid_is_refused_and_not_cached(tmp_path) -> None:
    tokens = authority(tmp_path, skew=0)
    token = tokens.issue("alice", pull(), now=time.time() + 120).token
    for _ in range(2):
        with pytest.raises(InvalidToken, match="not yet valid"):
            tokens.verify(token)
    assert len(tokens.verified) == 0


def test_the_cache_is_bounded_under_a_flood_of_distinct_tokens(tmp_path) -> None:
    tokens = authority(tmp_path, max_cached=64)
    flood = [tokens.issue("", []).token for _ in range(500)]  # anyone may get anonymous ones
    for token in flood:
        assert tokens.verify(token).subject == ""
        assert len(tokens.verified) <= 64
    assert len(tokens.verified) == 64
    hits = tokens.verified.hits
    assert tokens.verify(flood[0]).subject == ""  # evicted long ago: verified again, in full
    assert tokens.verified.hits == hits
    assert tokens.verify(flood[-1]).subject == ""  # among the most recent: from the cache
    assert tokens.verified.hits == hits + 1


def test_the_default_bound_holds_for_the_running_service(tmp_path) -> None:
    assert authority(tmp_path).verified.max_entries == MAX_TOKENS <= 10_000


# -- permissions remembered per (identity, repository) -------------------------------------------


def test_remembered_permissions_follow_the_identity_and_stay_bounded() -> None:
    permissions = Permissions([Rule.from_config(rule) for rule in PERMISSIONS], remembered=16)
    alice_dev = Identity("alice", "user", frozenset({"dev"}))
    alice_nothing = Identity("alice", "user", frozenset())
    assert permissions.actions(alice_dev, "team-a/app") == {"pull", "push"}
    assert permissions.actions(alice_dev, "team-a/app") == {"pull", "push"}
    assert permissions._actions.cache_info().hits == 1
    # Demoted (another identity): her current groups decide, not the remembered answer.
    assert permissions.actions(alice_nothing, "team-a/app") == frozenset()
    for i in range(1000):  # a flood of repository names
        assert permissions.actions(alice_dev, f"team-a/app{i}") == {"pull", "push"}
        assert permissions.actions(alice_dev, f"elsewhere/app{i}") == frozenset()
    assert permissions._actions.cache_info().currsize <= 16


# -- the users file, looked at once per loop iteration --------------------------------------------


async def test_the_users_file_decides_every_request_that_arrives_after_a_change(tmp_path) -> None:
    """Looked at once per event-loop iteration: a change made in the middle of an iteration is
    seen from the next one on, which is before any request that arrives after the change runs
    (its handler is started in a later iteration than the one that read its bytes)."""
    path = tmp_path / "users.yaml"
    UserStore(path).add_user("alice", PASSWORDS["alice"], ["dev"], replace=False)
    server_view = UserStore(path)
    assert server_view.get("alice") is not None
    assert UserStore(path).remove("alice")  # another process's `trustyard user remove`
    assert server_view.get("alice") is not None  # the same iteration: the same look
    await asyncio.sleep(0)  # one iteration later: what the mechanism promises, not a wait
    assert server_view.get("alice") is None


def test_a_same_size_rewrite_within_one_clock_tick_is_seen(tmp_path) -> None:
    """olga moved from `ops` to `dev`: the file keeps its size; with a coarse file system clock
    its mtime may not move either. The new inode and ctime still show the change."""
    path = tmp_path / "users.yaml"
    writer = UserStore(path)
    writer.add_user("olga", PASSWORDS["olga"], ["ops"], replace=False)
    server_view = UserStore(path)
    assert server_view.get("olga").groups == {"ops"}
    before = path.stat()
    document = yaml.safe_load(path.read_text())
    document["users"]["olga"]["groups"] = ["dev"]
    writer._write(document)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    assert server_view.get("olga").groups == {"dev"}


# -- over HTTP: the account behind a cached token decides ----------------------------------------


@pytest.fixture
def accounts(data_dir) -> Accounts:
    return write_accounts(data_dir)


@pytest.fixture
async def auth_client(start_client, accounts):
    return await start_client(auth=auth_section())


def cache_hits(client) -> int:
    return client.server.app[AUTH].tokens.verified.hits


async def test_a_removed_user_is_refused_though_their_token_is_cached(
    auth_client, accounts
) -> None:
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    await push_image(olga, "team-a/app", "v1")
    token = await fetch_token(auth_client, "repository:team-a/app:pull", user="alice")
    alice = As(auth_client, bearer(token))
    for _ in range(2):
        resp = await alice.get("/v2/team-a/app/manifests/v1", headers={"Accept": MANIFEST})
        assert resp.status == 200, await resp.text()
    assert cache_hits(auth_client) >= 1
    assert accounts.store.remove("alice")
    await refused_token(
        await alice.get("/v2/team-a/app/manifests/v1", headers={"Accept": MANIFEST})
    )


async def test_a_deleted_robot_is_refused_though_its_token_is_cached(auth_client, accounts) -> None:
    token = await fetch_token(
        auth_client, "repository:ci/app:pull,push", user="ci", secret=accounts.robot_token
    )
    robot = As(auth_client, bearer(token))
    await push_image(robot, "ci/app", "v1")
    hits = cache_hits(auth_client)
    resp = await robot.get("/v2/ci/app/manifests/v1", headers={"Accept": MANIFEST})
    assert resp.status == 200 and cache_hits(auth_client) == hits + 1
    assert accounts.store.remove("ci")
    await refused_token(await robot.get("/v2/ci/app/manifests/v1", headers={"Accept": MANIFEST}))
    await refused_token(await robot.post("/v2/ci/app/blobs/uploads/"))


async def test_a_robot_moved_out_of_its_group_loses_push_at_once(auth_client, accounts) -> None:
    token = await fetch_token(
        auth_client, "repository:ci/app:pull,push", user="ci", secret=accounts.robot_token
    )
    robot = As(auth_client, bearer(token))
    await push_image(robot, "ci/app", "v1")
    assert cache_hits(auth_client) >= 1
    document = yaml.safe_load(accounts.store.path.read_text())
    document["robots"]["ci"]["groups"] = []
    accounts.store._write(document)
    resp = await robot.post("/v2/ci/app/blobs/uploads/")
    assert resp.status == 403, await resp.text()
    body = await resp.json()
    assert error_codes(body) == ["DENIED"]
    assert body["errors"][0]["message"] == (
        "requested access to the resource is denied: ci may not pull or push ci/app"
    )


async def test_a_demoted_admin_loses_delete_with_the_token_cached(auth_client, accounts) -> None:
    olga_basic = As(auth_client, basic("olga", PASSWORDS["olga"]))
    digest, _ = await push_image(olga_basic, "team-a/app", "v1")
    token = await fetch_token(auth_client, "repository:team-a/app:pull,delete", user="olga")
    olga = As(auth_client, bearer(token))
    for _ in range(2):
        resp = await olga.get("/v2/team-a/app/manifests/v1", headers={"Accept": MANIFEST})
        assert resp.status == 200
    assert cache_hits(auth_client) >= 1
    set_groups(accounts.store, "olga", ["dev"])
    resp = await olga.delete(f"/v2/team-a/app/manifests/{digest}")
    assert resp.status == 403, await resp.text()
    body = await resp.json()
    assert body["errors"][0]["message"] == (
        "requested access to the resource is denied: olga may not delete team-a/app"
    )


async def test_a_token_expiring_while_cached_is_refused_over_http(start_client, accounts) -> None:
    client = await start_client(auth=auth_section(token={"ttl": "1h", "clock_skew": "0s"}))
    olga = As(client, basic("olga", PASSWORDS["olga"]))
    await push_image(olga, "team-a/app", "v1")
    # The registry's wall clock is held, then moved to the token's expiry: however slow the
    # machine, the requests that put it in the cache and take it out again come before it.
    held = int(time.time())  # a whole second: the moves below land exactly
    with time_machine.travel(held, tick=False) as clock:
        token = await fetch_token(client, "repository:team-a/app:pull", user="olga")
        # The token's own expiry (read, not trusted: the server decides).
        expires = jwt.decode(token, options={"verify_signature": False})["exp"]
        holder = As(client, bearer(token))
        hits = cache_hits(client)
        for _ in range(2):
            resp = await holder.get("/v2/team-a/app/manifests/v1", headers={"Accept": MANIFEST})
            assert resp.status == 200, await resp.text()
        assert cache_hits(client) == hits + 1  # the second one came from the cache
        clock.shift(expires - 1 - held)  # its last second: still served from the cache
        resp = await holder.get("/v2/team-a/app/manifests/v1", headers={"Accept": MANIFEST})
        assert resp.status == 200, await resp.text()
        assert cache_hits(client) == hits + 2
        clock.shift(1)  # the expiry
        await refused_token(
            await holder.get("/v2/team-a/app/manifests/v1", headers={"Accept": MANIFEST})
        )


async def test_a_token_for_another_service_is_refused_over_http(auth_client, data_dir) -> None:
    key = load_or_create_key(data_dir / "auth" / "token-signing-key.pem", configured=True)
    now = int(time.time())
    claims = {
        "iss": "trustyard",
        "sub": "olga",
        "aud": "another-registry",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "access": [{"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}],
    }
    token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": key_id(key)})
    for _ in range(2):
        await refused_token(
            await As(auth_client, bearer(token)).post("/v2/team-a/app/blobs/uploads/")
        )
    assert len(auth_client.server.app[AUTH].tokens.verified) == 0


# -- across processes: two servers, one users file -----------------------------------------------


def _get(url: str, token: str) -> int:
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}", "Accept": MANIFEST}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _token(url: str, user: str) -> str:
    request = urllib.request.Request(
        f"{url}/token?service=trustyard-test&scope=repository:team-a/app:pull",
        headers={"Authorization": basic(user, PASSWORDS[user])},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return str(json.load(resp)["token"])


def test_a_removal_by_another_process_decides_the_next_request_of_every_server(tmp_path) -> None:
    """Two registry processes (as `--workers 2` or two replicas on one users file and signing
    key) have alice's token cached; `trustyard user remove alice`, a third process, removes her:
    the next request to each is refused."""
    shared = tmp_path / "auth"
    store = UserStore(shared / "users.yaml")
    store.add_user("alice", PASSWORDS["alice"], ["dev"], replace=False)
    store.add_user("olga", PASSWORDS["olga"], ["ops"], replace=False)
    load_or_create_key(shared / "signing.pem", configured=False)
    config = tmp_path / "trustyard.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "auth": {
                    **auth_section(),
                    "users_file": str(shared / "users.yaml"),
                    "token": {"signing_key": str(shared / "signing.pem")},
                }
            }
        )
    )
    servers = []
    try:
        for name in ("a", "b"):
            servers.append(
                start_registry(tmp_path / name / "data", extra_args=["--config", str(config)])
            )
        token = _token(servers[0].url, "alice")  # issued by A, accepted by B: one key, one service
        for server in servers:
            _push_with(server.url, basic("olga", PASSWORDS["olga"]))
        for server in servers:
            for _ in range(3):  # verified once, then from each process's own cache
                assert _get(f"{server.url}/v2/team-a/app/manifests/v1", token) == 200
        removed = subprocess.run(
            [sys.executable, "-m", "registry", "user", "remove", "alice", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert removed.returncode == 0, removed.stderr
        for server in servers:
            assert _get(f"{server.url}/v2/team-a/app/manifests/v1", token) == 401
    finally:
        for server in servers:
            server.stop()


def _push_with(url: str, authorization: str) -> None:
    """Push a one-layer image `team-a/app:v1` (plain urllib: these are real server processes)."""

    def send(method: str, path: str, data: bytes, content_type: str) -> None:
        request = urllib.request.Request(
            f"{url}{path}",
            data=data,
            method=method,
            headers={"Authorization": authorization, "Content-Type": content_type},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 201

    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layer = b"a layer of team-a/app"
    for blob in (config, layer):
        send("POST", f"/v2/team-a/app/blobs/uploads/?digest={sha256(blob)}", blob, "x/y")
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
    }
    send("PUT", "/v2/team-a/app/manifests/v1", json.dumps(manifest).encode(), MANIFEST)
