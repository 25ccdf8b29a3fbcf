"""A bearer token outlives no change of its holder's credential.

What someone holding a stolen token (or an old password) tries after the owner reacts: the owner
changes the password, or the operator deletes a leaked robot and creates it again under the same
name, or replaces the hash in the users file by hand. Every token issued before must stop working
at once, although it is still within its lifetime and already in the verified-token cache, with a
401 naming the reason; a token got with the new credential works. A change of groups alone is a
change of role, not of credential: the token stays, cut down to the new role (the demotion tests
in `test_auth_decisions.py` and `test_auth_caches.py`).
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import yaml

from registry.auth.service import AUTH
from registry.auth.tokens import ALGORITHM, TokenAuthority, key_id, load_or_create_key
from registry.auth.users import hash_password
from tests.auth.conftest import (
    PASSWORDS,
    Accounts,
    As,
    auth_section,
    basic,
    bearer,
    fetch_token,
    set_groups,
    write_accounts,
)
from tests.oci import error_codes, push_image

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CHANGED = "the token was issued before its holder's password or robot token changed: log in again"


@pytest.fixture
def accounts(data_dir) -> Accounts:
    return write_accounts(data_dir)


@pytest.fixture
async def auth_client(start_client, accounts):
    return await start_client(auth=auth_section())


async def refused(resp: Any, message: str = CHANGED) -> None:
    """The 401 a client sees for a token that no longer stands for its holder."""
    assert resp.status == 401, await resp.text()
    body = await resp.json()
    assert error_codes(body) == ["UNAUTHORIZED"]
    assert body["errors"][0]["message"] == message
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def token_refused(client: Any, user: str, secret: str) -> None:
    """The token endpoint refuses `secret` for `user`."""
    resp = await client.get(
        "/token",
        params={"service": "trustyard-test", "scope": "repository:team-a/app:pull"},
        headers={"Authorization": basic(user, secret)},
    )
    assert resp.status == 401, await resp.text()
    assert (await resp.json())["errors"][0]["message"] == "incorrect username or password"


def cache_hits(client: Any) -> int:
    return client.server.app[AUTH].tokens.verified.hits


async def cached_pull(client: Any, holder: As, repository: str) -> None:
    """Pull twice with the holder's token and prove the second was answered from the cache."""
    before = cache_hits(client)
    for _ in range(2):
        resp = await holder.get(f"/v2/{repository}/manifests/v1", headers={"Accept": MANIFEST})
        assert resp.status == 200, await resp.text()
    assert cache_hits(client) >= before + 1


@pytest.mark.parametrize("new_password", ["alice-new-secret", PASSWORDS["alice"]])
async def test_a_password_set_again_ends_every_token_got_with_the_old_one(
    auth_client, accounts, new_password: str
) -> None:
    """A new password, or the same one set again (Argon2 salts every hash anew: a user who
    resets their password because the old one leaked may well pick it again)."""
    token = await fetch_token(auth_client, "repository:team-a/app:pull,push", user="alice")
    alice = As(auth_client, bearer(token))
    await push_image(alice, "team-a/app", "v1")
    await cached_pull(auth_client, alice, "team-a/app")
    accounts.store.add_user("alice", new_password, ["dev"], replace=True)
    await refused(await alice.get("/v2/team-a/app/manifests/v1", headers={"Accept": MANIFEST}))
    await refused(await alice.post("/v2/team-a/app/blobs/uploads/"))
    await refused(await alice.get("/v2/"))
    if new_password != PASSWORDS["alice"]:
        await token_refused(auth_client, "alice", PASSWORDS["alice"])
    fresh = await fetch_token(
        auth_client, "repository:team-a/app:pull,push", user="alice", secret=new_password
    )
    resp = await As(auth_client, bearer(fresh)).get(
        "/v2/team-a/app/manifests/v1", headers={"Accept": MANIFEST}
    )
    assert resp.status == 200, await resp.text()
    # The old token stays refused after the new one was used (nothing re-validates it).
    await refused(await alice.get("/v2/team-a/app/manifests/v1", headers={"Accept": MANIFEST}))


async def test_a_robot_created_again_under_its_name_does_not_revive_old_tokens(
    auth_client, accounts
) -> None:
    leaked = accounts.robot_token
    token = await fetch_token(auth_client, "repository:ci/app:pull,push", user="ci", secret=leaked)
    robot = As(auth_client, bearer(token))
    await push_image(robot, "ci/app", "v1")
    await cached_pull(auth_client, robot, "ci/app")
    assert accounts.store.remove("ci")
    new_secret = accounts.store.add_robot("ci", ["ci"], replace=False)
    await refused(await robot.get("/v2/ci/app/manifests/v1", headers={"Accept": MANIFEST}))
    await refused(await robot.post("/v2/ci/app/blobs/uploads/"))
    await token_refused(auth_client, "ci", leaked)
    fresh = await fetch_token(auth_client, "repository:ci/app:pull", user="ci", secret=new_secret)
    resp = await As(auth_client, bearer(fresh)).get(
        "/v2/ci/app/manifests/v1", headers={"Accept": MANIFEST}
    )
    assert resp.status == 200, await resp.text()


async def test_a_robot_token_replaced_in_place_ends_old_tokens(auth_client, accounts) -> None:
    token = await fetch_token(
        auth_client, "repository:ci/app:pull,push", user="ci", secret=accounts.robot_token
    )
    robot = As(auth_client, bearer(token))
    await push_image(robot, "ci/app", "v1")
    accounts.store.add_robot("ci", ["ci"], replace=True)  # `trustyard robot add --replace`
    await refused(await robot.get("/v2/ci/app/manifests/v1", headers={"Accept": MANIFEST}))


async def test_a_user_replaced_by_a_robot_of_the_same_name_keeps_no_token(
    auth_client, accounts
) -> None:
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    await push_image(olga, "team-a/app", "v1")
    token = await fetch_token(auth_client, "repository:team-a/app:pull", user="alice")
    alice = As(auth_client, bearer(token))
    await cached_pull(auth_client, alice, "team-a/app")
    assert accounts.store.remove("alice")
    accounts.store.add_robot("alice", ["dev"], replace=False)
    await refused(await alice.get("/v2/team-a/app/manifests/v1", headers={"Accept": MANIFEST}))


@pytest.mark.parametrize("edit", ["new hash", "another user's hash", "robot digest"])
async def test_a_secret_edited_by_hand_in_the_users_file_ends_old_tokens(
    auth_client, accounts, edit: str
) -> None:
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    await push_image(olga, "team-a/app", "v1")
    token = await fetch_token(auth_client, "repository:team-a/app:pull", user="alice")
    alice = As(auth_client, bearer(token))
    await cached_pull(auth_client, alice, "team-a/app")
    document = yaml.safe_load(accounts.store.path.read_text())
    if edit == "new hash":
        document["users"]["alice"]["password"] = hash_password("typed-into-the-file")
    elif edit == "another user's hash":
        document["users"]["alice"]["password"] = document["users"]["bob"]["password"]
    else:  # the robot's stored digest pasted as alice's password: still another secret
        document["users"]["alice"]["password"] = document["robots"]["ci"]["token_sha256"]
    accounts.store._write(document)
    await refused(await alice.get("/v2/team-a/app/manifests/v1", headers={"Accept": MANIFEST}))


async def test_a_change_of_groups_alone_keeps_the_token(auth_client, accounts) -> None:
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    await push_image(olga, "team-a/app", "v1")
    token = await fetch_token(auth_client, "repository:team-a/app:pull", user="alice")
    alice = As(auth_client, bearer(token))
    await cached_pull(auth_client, alice, "team-a/app")
    set_groups(accounts.store, "alice", ["dev", "readers"])
    resp = await alice.get("/v2/team-a/app/manifests/v1", headers={"Accept": MANIFEST})
    assert resp.status == 200, await resp.text()


def _signed(data_dir: Any, **changes: Any) -> str:
    """A token signed by the registry's own key for olga, with `changes` to its claims."""
    key = load_or_create_key(data_dir / "auth" / "token-signing-key.pem", configured=True)
    now = int(time.time())
    claims = {
        "iss": "trustyard",
        "sub": "olga",
        "aud": "trustyard-test",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "old",
        "access": [{"type": "repository", "name": "team-a/app", "actions": ["pull"]}],
        **changes,
    }
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": key_id(key)})


async def test_a_token_bound_to_no_or_another_credential_is_refused(
    auth_client, accounts, data_dir
) -> None:
    """Signed by the registry's own key, within its lifetime, but without the claim (a token
    from before credentials were bound), with an empty one, or with another account's."""
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    await push_image(olga, "team-a/app", "v1")
    users = accounts.store.accounts()
    genuine = _signed(data_dir, cred=users["olga"].credential)
    resp = await As(auth_client, bearer(genuine)).get(
        "/v2/team-a/app/manifests/v1", headers={"Accept": MANIFEST}
    )
    assert resp.status == 200, await resp.text()
    ours = users["olga"].credential
    # Absent, empty, another account's, and olga's own cut short or lengthened (sorting before
    # and after hers: only equality counts).
    for cred in (None, "", users["alice"].credential, ours[:-1], ours + "0"):
        holder = As(auth_client, bearer(_signed(data_dir, cred=cred)))
        await refused(await holder.get("/v2/team-a/app/manifests/v1"))
    for cred in (123, ["x"], {"olga": 1}):  # not a string: the token itself is malformed
        holder = As(auth_client, bearer(_signed(data_dir, cred=cred)))
        await refused(await holder.get("/v2/team-a/app/manifests/v1"), "invalid or expired token")


def test_the_authority_carries_the_credential_it_was_given(tmp_path) -> None:
    key = load_or_create_key(tmp_path / "key.pem", configured=False)
    authority = TokenAuthority(key, issuer="trustyard", service="svc", ttl=300, clock_skew=30)
    issued = authority.issue("alice", [], credential="c0ffee")
    assert jwt.decode(issued.token, options={"verify_signature": False})["cred"] == "c0ffee"
    assert authority.verify(issued.token).credential == "c0ffee"
    assert authority.verify(issued.token).credential == "c0ffee"  # from the cache
    assert authority.verify(authority.issue("", []).token).credential == ""
