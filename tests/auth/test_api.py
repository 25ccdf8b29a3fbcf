"""The token flow and authorization through the HTTP API (aiohttp test client)."""

from __future__ import annotations

import base64
import json
import stat
import time

from registry.auth.service import AUTH
from tests.auth.conftest import (
    PASSWORDS,
    PERMISSIONS,
    As,
    auth_section,
    basic,
    bearer,
    fetch_token,
)
from tests.oci import error_codes, push_blob, push_image, sha256


def challenge_params(header: str) -> dict[str, str]:
    scheme, _, rest = header.partition(" ")
    assert scheme == "Bearer"
    params = {}
    for part in rest.split('",'):
        key, _, value = part.partition("=")
        params[key.strip()] = value.strip('"')
    return params


async def test_without_auth_section_the_registry_stays_open(client):
    resp = await client.get("/v2/")
    assert resp.status == 200
    assert "WWW-Authenticate" not in resp.headers
    await push_image(client, "anyone/app", "v1")
    assert (await client.get("/token")).status == 404


async def test_api_base_challenges_anonymous_callers(auth_client):
    resp = await auth_client.get("/v2/")
    assert resp.status == 401
    assert error_codes(await resp.json()) == ["UNAUTHORIZED"]
    params = challenge_params(resp.headers["WWW-Authenticate"])
    assert params["realm"] == str(auth_client.make_url("/token"))
    assert params["service"] == "trustyard-test"
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_push_challenge_names_the_scope(auth_client):
    resp = await auth_client.post("/v2/team-a/app/blobs/uploads/")
    assert resp.status == 401
    params = challenge_params(resp.headers["WWW-Authenticate"])
    assert params["scope"] == "repository:team-a/app:pull,push"
    pull = await auth_client.get("/v2/team-a/app/manifests/v1")
    assert challenge_params(pull.headers["WWW-Authenticate"])["scope"] == (
        "repository:team-a/app:pull"
    )


async def test_token_flow_push_then_pull(auth_client):
    token = await fetch_token(auth_client, "repository:team-a/app:pull,push", user="alice")
    alice = As(auth_client, bearer(token))
    assert (await alice.get("/v2/")).status == 200
    digest, _ = await push_image(alice, "team-a/app", "v1")
    resp = await alice.get("/v2/team-a/app/manifests/v1")
    assert resp.status == 200
    assert resp.headers["Docker-Content-Digest"] == digest


async def test_token_claims_are_bound_to_service_and_subject(auth_client):
    token = await fetch_token(auth_client, "repository:team-a/app:pull,push", user="alice")
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["aud"] == "trustyard-test"
    assert payload["sub"] == "alice"
    assert payload["iss"] == "trustyard"
    assert payload["exp"] - payload["iat"] == 300
    assert payload["access"] == [
        {"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}
    ]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "ES256"


async def test_granted_scope_is_the_intersection(auth_client):
    resp = await auth_client.get(
        "/token",
        params=[("scope", "repository:b:pull,push,delete"), ("scope", "repository:secret:pull")],
        headers={"Authorization": basic("alice", PASSWORDS["alice"])},
    )
    payload = json.loads(
        base64.urlsafe_b64decode((await resp.json())["token"].split(".")[1] + "==")
    )
    assert payload["access"] == [{"type": "repository", "name": "b", "actions": ["pull"]}]


async def test_token_for_pull_on_a_cannot_push_a_nor_pull_b(auth_client):
    token = await fetch_token(auth_client, "repository:a:pull", user="alice")
    alice = As(auth_client, bearer(token))
    push = await alice.post("/v2/a/blobs/uploads/")
    assert push.status == 401
    params = challenge_params(push.headers["WWW-Authenticate"])
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == "repository:a:pull,push"
    pull_b = await alice.get("/v2/b/tags/list")
    assert pull_b.status == 401
    assert challenge_params(pull_b.headers["WWW-Authenticate"])["scope"] == "repository:b:pull"
    # The token does let alice pull a.
    allowed = await alice.get("/v2/a/tags/list")  # authorized; the repository is empty
    assert allowed.status == 404
    assert error_codes(await allowed.json()) == ["NAME_UNKNOWN"]


async def test_authenticated_caller_without_rights_is_denied(auth_client):
    token = await fetch_token(auth_client, "repository:team-a/app:pull,push", user="bob")
    bob = As(auth_client, bearer(token))
    resp = await bob.post("/v2/team-a/app/blobs/uploads/")
    assert resp.status == 403
    body = await resp.json()
    assert error_codes(body) == ["DENIED"]
    assert "bob may not pull or push team-a/app" in body["errors"][0]["message"]


async def test_expired_token_is_refused(auth_client):
    service = auth_client.app[AUTH]
    from registry.auth.scopes import parse_scopes

    # Bound to alice's current credential: only its age is wrong.
    credential = service.users.get("alice").credential
    old = service.tokens.issue(
        "alice", parse_scopes(["repository:a:pull"]), credential=credential, now=time.time() - 3600
    )
    resp = await As(auth_client, bearer(old.token)).get("/v2/a/tags/list")
    assert resp.status == 401
    assert challenge_params(resp.headers["WWW-Authenticate"])["error"] == "invalid_token"


async def test_token_within_clock_skew_is_accepted(auth_client):
    service = auth_client.app[AUTH]
    from registry.auth.scopes import parse_scopes

    # Issued by a clock 30 s ahead: nbf/iat in the future, within the 60 s tolerance.
    credential = service.users.get("alice").credential
    ahead = service.tokens.issue(
        "alice", parse_scopes(["repository:a:pull"]), credential=credential, now=time.time() + 30
    )
    assert (await As(auth_client, bearer(ahead.token)).get("/v2/")).status == 200


async def test_tampered_token_is_refused(auth_client):
    token = await fetch_token(auth_client, "repository:a:pull", user="alice")
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["access"][0]["actions"] = ["pull", "push"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    resp = await As(auth_client, bearer(f"{header}.{forged}.{signature}")).post(
        "/v2/a/blobs/uploads/"
    )
    assert resp.status == 401
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    resp = await As(auth_client, bearer(f"{unsigned}.{forged}.")).get("/v2/")
    assert resp.status == 401


async def test_token_for_another_service_is_refused(start_client, accounts, data_dir):
    other = await start_client(auth=auth_section(service="elsewhere"))
    # The same signing key (same data directory), another audience.
    token = await fetch_token(other, "repository:a:pull", user="alice", service="elsewhere")
    mine = await start_client(auth=auth_section())
    resp = await As(mine, bearer(token)).get("/v2/")
    assert resp.status == 401


async def test_only_a_bearer_credential_is_refused_as_an_invalid_token(auth_client):
    """Each credential is refused for what it is: the challenge's `invalid_token` hint (the
    client's cue to throw its token away) goes with a refused token only, never with a wrong
    password or a scheme the registry does not speak."""
    refusals = {
        "Bearer not.a.token": ("invalid or expired token", "invalid_token"),
        basic("alice", "wrong"): ("incorrect username or password", None),
        "Digest username=alice": ("unsupported authorization scheme", None),
        "Token abc": ("unsupported authorization scheme", None),
    }
    for authorization, (message, hint) in refusals.items():
        resp = await As(auth_client, authorization).get("/v2/team-a/app/tags/list")
        assert resp.status == 401, authorization
        body = await resp.json()
        assert error_codes(body) == ["UNAUTHORIZED"]
        assert body["errors"][0]["message"] == message, authorization
        params = challenge_params(resp.headers["WWW-Authenticate"])
        assert params.get("error") == hint, authorization
        assert params["realm"] == str(auth_client.make_url("/token"))


async def test_wrong_password_is_refused_at_token_and_v2(auth_client):
    resp = await auth_client.get(
        "/token", headers={"Authorization": basic("alice", "wrong")}, params={"scope": "x"}
    )
    assert resp.status == 401
    assert error_codes(await resp.json()) == ["UNAUTHORIZED"]
    resp = await As(auth_client, basic("alice", "wrong")).get("/v2/")
    assert resp.status == 401
    assert "WWW-Authenticate" in resp.headers


async def test_basic_auth_directly_on_v2(auth_client):
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    assert (await olga.get("/v2/")).status == 200
    await push_image(olga, "library/base", "v1")
    alice = As(auth_client, basic("alice", PASSWORDS["alice"]))
    assert (await alice.get("/v2/library/base/manifests/v1")).status == 200
    denied = await alice.post("/v2/library/base/blobs/uploads/")
    assert denied.status == 403


async def test_anonymous_pull_where_allowed(auth_client):
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    await push_image(olga, "library/base", "v1")
    await push_image(olga, "team-a/app", "v1")
    token = await fetch_token(auth_client, "repository:library/base:pull,push")
    anonymous = As(auth_client, bearer(token))
    assert (await anonymous.get("/v2/library/base/manifests/v1")).status == 200
    assert (await anonymous.post("/v2/library/base/blobs/uploads/")).status == 401
    nothing = await fetch_token(auth_client, "repository:team-a/app:pull")
    assert (await As(auth_client, bearer(nothing)).get("/v2/team-a/app/manifests/v1")).status == 401


async def test_catalog_lists_only_what_the_caller_may_pull(auth_client):
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    for name in ("library/base", "team-a/app", "secret/x", "a", "b", "ci/tool"):
        await push_image(olga, name, "v1")
    alice = As(auth_client, basic("alice", PASSWORDS["alice"]))
    resp = await alice.get("/v2/_catalog")
    assert (await resp.json())["repositories"] == ["a", "b", "library/base", "team-a/app"]
    page = await alice.get("/v2/_catalog", params={"n": "2", "last": "a"})
    assert (await page.json())["repositories"] == ["b", "library/base"]
    assert "last=library%2Fbase" in page.headers["Link"]
    everything = await olga.get("/v2/_catalog")
    assert len((await everything.json())["repositories"]) == 6
    # `anonymous: pull` on library/** lets anonymous callers list what they may pull.
    anonymous = await auth_client.get("/v2/_catalog")
    assert anonymous.status == 200
    assert (await anonymous.json())["repositories"] == ["library/base"]
    anonymous_token = await fetch_token(auth_client, "registry:catalog:*")
    listed = await As(auth_client, bearer(anonymous_token)).get("/v2/_catalog")
    assert (await listed.json())["repositories"] == ["library/base"]
    token = await fetch_token(auth_client, "registry:catalog:*", user="bob")
    bob = await As(auth_client, bearer(token)).get("/v2/_catalog")
    assert (await bob.json())["repositories"] == ["library/base"]


async def test_catalog_needs_a_login_when_anonymous_may_pull_nothing(start_client, accounts):
    client = await start_client(
        auth=auth_section(permissions=[{"namespace": "**", "authenticated": "pull"}])
    )
    anonymous = await client.get("/v2/_catalog")
    assert anonymous.status == 401
    assert challenge_params(anonymous.headers["WWW-Authenticate"])["scope"] == (
        "registry:catalog:*"
    )
    alice = await As(client, basic("alice", PASSWORDS["alice"])).get("/v2/_catalog")
    assert alice.status == 200


async def test_failed_logins_are_rate_limited_per_user(start_client, accounts):
    client = await start_client(auth=auth_section(rate_limit={"max_failures_per_user": 3}))
    for _ in range(3):
        resp = await As(client, basic("alice", "guess")).get("/v2/")
        assert resp.status == 401
    locked = await As(client, basic("alice", PASSWORDS["alice"])).get("/v2/")
    assert locked.status == 429
    assert error_codes(await locked.json()) == ["TOOMANYREQUESTS"]
    assert int(locked.headers["Retry-After"]) > 0
    token = await client.get("/token", headers={"Authorization": basic("alice", "guess")})
    assert token.status == 429
    # Another user is not locked by alice's failures.
    assert (await As(client, basic("olga", PASSWORDS["olga"])).get("/v2/")).status == 200


async def test_failed_logins_are_rate_limited_per_source(start_client, accounts):
    client = await start_client(
        auth=auth_section(rate_limit={"max_failures_per_user": 100, "max_failures_per_source": 4})
    )
    for user in ("u1", "u2", "u3", "u4"):
        assert (await As(client, basic(user, "guess")).get("/v2/")).status == 401
    assert (await As(client, basic("olga", PASSWORDS["olga"])).get("/v2/")).status == 429


async def test_robot_token_pushes_where_its_group_may(auth_client, accounts):
    robot = As(auth_client, basic("ci", accounts.robot_token))
    await push_image(robot, "ci/tool", "v1")
    assert (await robot.post("/v2/team-a/app/blobs/uploads/")).status == 403
    assert (await As(auth_client, basic("ci", "tyr_wrong")).get("/v2/")).status == 401
    token = await fetch_token(
        auth_client, "repository:ci/tool:pull", user="ci", secret=accounts.robot_token
    )
    assert (await As(auth_client, bearer(token)).get("/v2/ci/tool/manifests/v1")).status == 200


async def test_oauth2_password_grant(auth_client):
    resp = await auth_client.post(
        "/token",
        data={
            "grant_type": "password",
            "username": "alice",
            "password": PASSWORDS["alice"],
            "service": "trustyard-test",
            "client_id": "containerd",
            "scope": "repository:team-a/app:pull,push repository:secret:pull",
        },
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["scope"] == "repository:team-a/app:pull,push"
    assert body["expires_in"] == 300
    alice = As(auth_client, bearer(body["access_token"]))
    await push_blob(alice, "team-a/app", b"data")
    wrong = await auth_client.post(
        "/token", data={"grant_type": "password", "username": "alice", "password": "nope"}
    )
    assert wrong.status == 401
    assert (await wrong.json())["error"] == "invalid_grant"
    refresh = await auth_client.post("/token", data={"grant_type": "refresh_token"})
    assert refresh.status == 400


async def test_malformed_scope_and_wrong_service_are_bad_requests(auth_client):
    resp = await auth_client.get("/token", params={"scope": "repository:UP:pull"})
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_scope"
    resp = await auth_client.get("/token", params={"service": "someone-else"})
    assert resp.status == 400


async def test_metrics_need_an_administrator(auth_client):
    assert (await auth_client.get("/metrics")).status == 401
    assert (await As(auth_client, basic("alice", PASSWORDS["alice"])).get("/metrics")).status == 403
    assert (await As(auth_client, basic("olga", PASSWORDS["olga"])).get("/metrics")).status == 200


async def test_admin_api_needs_an_administrator(auth_client):
    assert (await auth_client.get("/api/v1/decisions")).status == 401
    alice = As(auth_client, basic("alice", PASSWORDS["alice"]))
    assert (await alice.get("/api/v1/decisions")).status == 403
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    assert (await olga.get("/api/v1/decisions")).status == 200


async def test_metrics_access_is_configurable(start_client, accounts):
    client = await start_client(auth=auth_section(metrics="anonymous"))
    assert (await client.get("/metrics")).status == 200
    # Only /metrics opens: the management API stays for administrators (and viewers).
    resp = await client.get("/api/v1/decisions")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="trustyard"'
    assert error_codes(await resp.json()) == ["UNAUTHORIZED"]


async def test_metrics_for_authenticated_callers_need_no_administrator(start_client, accounts):
    client = await start_client(auth=auth_section(metrics="authenticated"))
    alice = As(client, basic("alice", PASSWORDS["alice"]))  # no rights on every repository
    resp = await alice.get("/metrics")
    assert resp.status == 200, await resp.text()
    assert "trustyard_" in await resp.text()
    anonymous = await client.get("/metrics")
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="trustyard"'
    assert error_codes(await anonymous.json()) == ["UNAUTHORIZED"]


async def test_a_viewer_reads_the_api_but_not_the_administrators_metrics(start_client, accounts):
    """`viewer` opens the management API's reads, not `/metrics` kept for administrators."""
    viewer = {"namespace": "**", "users": {"bob": "viewer"}}
    client = await start_client(auth=auth_section(permissions=[*PERMISSIONS, viewer]))
    bob = As(client, basic("bob", PASSWORDS["bob"]))
    assert (await bob.get("/api/v1/decisions")).status == 200
    resp = await bob.get("/metrics")
    assert resp.status == 403, await resp.text()
    body = await resp.json()
    assert error_codes(body) == ["DENIED"]
    assert body["errors"][0]["message"] == "for registry administrators only"


async def test_mount_from_an_unreadable_repository_becomes_a_plain_upload(auth_client):
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    digest = await push_blob(olga, "secret/x", b"secret layer")
    alice = As(auth_client, basic("alice", PASSWORDS["alice"]))
    resp = await alice.post(f"/v2/team-a/app/blobs/uploads/?mount={digest}&from=secret/x")
    assert resp.status == 202
    assert (await alice.head(f"/v2/team-a/app/blobs/{digest}")).status == 404
    mounted = await olga.post(f"/v2/team-a/app/blobs/uploads/?mount={digest}&from=secret/x")
    assert mounted.status == 201
    assert digest == sha256(b"secret layer")


async def test_a_mount_turned_into_a_plain_upload_keeps_a_repeated_parameter_refused(auth_client):
    """Dropping `mount` and `from` must not merge the parameters left: `digest` given twice is
    refused (as for any upload), never one of the two digests picked for a monolithic upload."""
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    secret = await push_blob(olga, "secret/x", b"secret layer")
    alice = As(auth_client, basic("alice", PASSWORDS["alice"]))  # may not pull secret/x
    body = b"alice's layer"
    first, second = sha256(b"another layer"), sha256(body)
    for query in (
        f"mount={secret}&from=secret/x&digest={first}&digest={second}",
        f"digest={first}&digest={second}",
    ):
        resp = await alice.post(f"/v2/team-a/app/blobs/uploads/?{query}", data=body)
        assert resp.status == 400, await resp.text()
        document = await resp.json()
        assert error_codes(document) == ["DIGEST_INVALID"]
        assert document["errors"][0]["message"] == "query parameter digest given more than once"
    assert (await olga.head(f"/v2/team-a/app/blobs/{second}")).status == 404


async def test_removed_user_loses_its_tokens(auth_client, accounts):
    token = await fetch_token(auth_client, "repository:a:pull", user="alice")
    accounts.store.remove("alice")
    assert (await As(auth_client, bearer(token)).get("/v2/")).status == 401


async def test_identity_is_set_for_the_policy_engine(aiohttp_client, data_dir, accounts):
    from aiohttp import web

    from registry.app import create_app
    from registry.identity import identity
    from tests.conftest import make_config

    async def whoami(request: web.Request) -> web.StreamResponse:
        who = identity(request)
        return web.json_response({"name": who.name, "kind": who.kind, "groups": sorted(who.groups)})

    app = create_app(make_config(data_dir, auth=auth_section()))
    app.router.add_get("/whoami", whoami)
    client = await aiohttp_client(app)
    olga = await As(client, basic("olga", PASSWORDS["olga"])).get("/whoami")
    assert await olga.json() == {"name": "olga", "kind": "user", "groups": ["ops"]}
    robot = await As(client, basic("ci", accounts.robot_token)).get("/whoami")
    assert await robot.json() == {"name": "ci", "kind": "robot", "groups": ["ci"]}
    anonymous = await client.get("/whoami")
    assert (await anonymous.json())["kind"] == "anonymous"


async def test_signing_key_is_generated_private(auth_client, data_dir):
    key = data_dir / "auth" / "token-signing-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes()
