"""What an attacker with push rights (or a stolen, a forged or an outdated token) tries against
authorization: deleting without `delete`, keeping a token's power after a demotion, and the
classic JWT forgeries. Every refusal is checked with its status, code and words."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry.auth.tokens import (
    ALGORITHM,
    InvalidToken,
    TokenAuthority,
    key_id,
    load_or_create_key,
)
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
from tests.oci import error_codes, push_blob, push_image


def challenge_params(header: str) -> dict[str, str]:
    scheme, _, rest = header.partition(" ")
    assert scheme == "Bearer"
    params = {}
    for part in rest.split('",'):
        key, _, value = part.partition("=")
        params[key.strip()] = value.strip('"')
    return params


async def denied(resp: Any, message: str) -> None:
    assert resp.status == 403, await resp.text()
    body = await resp.json()
    assert error_codes(body) == ["DENIED"]
    assert body["errors"][0]["message"] == message


# -- deletes need `delete`, not `pull` or `push` -------------------------------------------------


@pytest.fixture
def accounts(data_dir) -> Accounts:
    return write_accounts(data_dir)


@pytest.fixture
async def auth_client(start_client, accounts):
    return await start_client(auth=auth_section())


@pytest.mark.parametrize("how", ["basic", "token"])
async def test_a_pusher_cannot_delete_a_manifest_or_a_blob(auth_client, how: str) -> None:
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    digest, _ = await push_image(olga, "team-a/app", "v1")
    layer = await push_blob(olga, "team-a/app", b"a layer alice would like gone")
    if how == "basic":
        alice = As(auth_client, basic("alice", PASSWORDS["alice"]))
    else:  # alice asks for delete; the token endpoint grants what she has: pull, push
        token = await fetch_token(
            auth_client, "repository:team-a/app:pull,push,delete", user="alice"
        )
        alice = As(auth_client, bearer(token))
    refused = "requested access to the resource is denied: alice may not delete team-a/app"
    await denied(await alice.delete(f"/v2/team-a/app/manifests/{digest}"), refused)
    await denied(await alice.delete("/v2/team-a/app/manifests/v1"), refused)
    await denied(await alice.delete(f"/v2/team-a/app/blobs/{layer}"), refused)
    # Nothing was deleted: the manifest and the blob are still served.
    assert (await olga.head(f"/v2/team-a/app/manifests/{digest}")).status == 200
    assert (await olga.head(f"/v2/team-a/app/blobs/{layer}")).status == 200


async def test_a_reader_cannot_delete_either(auth_client) -> None:
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    digest, _ = await push_image(olga, "b", "v1")
    alice = As(auth_client, basic("alice", PASSWORDS["alice"]))  # pull on b only
    await denied(
        await alice.delete(f"/v2/b/manifests/{digest}"),
        "requested access to the resource is denied: alice may not delete b",
    )


async def test_a_token_without_delete_cannot_delete_for_an_admin(auth_client) -> None:
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    digest, _ = await push_image(olga, "team-a/app", "v1")
    token = await fetch_token(auth_client, "repository:team-a/app:pull,push", user="olga")
    resp = await As(auth_client, bearer(token)).delete(f"/v2/team-a/app/manifests/{digest}")
    assert resp.status == 401
    params = challenge_params(resp.headers["WWW-Authenticate"])
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == "repository:team-a/app:delete"
    # With delete in the token, the same admin deletes.
    token = await fetch_token(auth_client, "repository:team-a/app:delete", user="olga")
    resp = await As(auth_client, bearer(token)).delete(f"/v2/team-a/app/manifests/{digest}")
    assert resp.status == 202, await resp.text()


# -- a token dies with its holder's rights --------------------------------------------------------


async def test_a_demoted_user_loses_what_their_token_granted(auth_client, accounts) -> None:
    token = await fetch_token(auth_client, "repository:team-a/app:pull,push", user="alice")
    alice = As(auth_client, bearer(token))
    await push_image(alice, "team-a/app", "v1")
    # alice leaves the dev group: her five-minute token must not outlive the demotion.
    set_groups(accounts.store, "alice", [])
    await denied(
        await alice.post("/v2/team-a/app/blobs/uploads/"),
        "requested access to the resource is denied: alice may not pull or push team-a/app",
    )
    await denied(
        await alice.get("/v2/team-a/app/manifests/v1"),
        "requested access to the resource is denied: alice may not pull team-a/app",
    )


async def test_a_demoted_admin_loses_delete_at_once(auth_client, accounts) -> None:
    olga = As(auth_client, basic("olga", PASSWORDS["olga"]))
    digest, _ = await push_image(olga, "team-a/app", "v1")
    token = await fetch_token(auth_client, "repository:team-a/app:delete", user="olga")
    set_groups(accounts.store, "olga", ["dev"])  # push only now
    await denied(
        await As(auth_client, bearer(token)).delete(f"/v2/team-a/app/manifests/{digest}"),
        "requested access to the resource is denied: olga may not delete team-a/app",
    )


# -- forged tokens -------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def valid_claims(service: str = "trustyard-test", subject: str = "olga") -> dict[str, Any]:
    """Claims the registry would accept from its own key: only the signature is wrong below."""
    now = int(time.time())
    return {
        "iss": "trustyard",
        "sub": subject,
        "aud": service,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "forged",
        "access": [{"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}],
    }


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def forgeries(public_pem: bytes, kid: str) -> dict[str, str]:
    """Each classic attempt, with claims the registry would otherwise accept."""
    claims = valid_claims()
    stranger = ec.generate_private_key(ec.SECP256R1())

    def es256(key: ec.EllipticCurvePrivateKey) -> Any:
        def sign(data: bytes) -> bytes:
            from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

            r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        return sign

    return {
        # HS256 keyed with the public key a verifier might pass to an HMAC check.
        "hs256-public-pem": forge(
            {"alg": "HS256", "typ": "JWT", "kid": kid},
            claims,
            lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
        ),
        "none": forge({"alg": "none", "typ": "JWT"}, claims, lambda data: b""),
        "None": forge({"alg": "None", "typ": "JWT"}, claims, lambda data: b""),
        # A well-formed ES256 token naming our key id, signed by another key.
        "es256-other-key": forge(
            {"alg": "ES256", "typ": "JWT", "kid": kid}, claims, es256(stranger)
        ),
    }


def test_forged_tokens_are_refused_by_the_authority(tmp_path) -> None:
    key = load_or_create_key(tmp_path / "key.pem", configured=False)
    authority = TokenAuthority(
        key, issuer="trustyard", service="trustyard-test", ttl=300, clock_skew=30
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # The same claims signed by our key pass: what fails below is the signature alone.
    ours = jwt.encode(valid_claims(), key, algorithm=ALGORITHM, headers={"kid": key_id(key)})
    assert authority.verify(ours).subject == "olga"
    expected = {
        "hs256-public-pem": "The specified alg value is not allowed",
        "none": "The specified alg value is not allowed",
        "None": "The specified alg value is not allowed",
        "es256-other-key": "Signature verification failed",
    }
    for name, token in forgeries(public_pem, key_id(key)).items():
        with pytest.raises(InvalidToken) as refused:
            authority.verify(token)
        assert str(refused.value) == expected[name], name


async def test_forged_tokens_are_refused_over_http(auth_client, data_dir) -> None:
    key = load_or_create_key(data_dir / "auth" / "token-signing-key.pem", configured=True)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for name, token in forgeries(public_pem, key_id(key)).items():
        resp = await As(auth_client, bearer(token)).post("/v2/team-a/app/blobs/uploads/")
        assert resp.status == 401, name
        assert error_codes(await resp.json()) == ["UNAUTHORIZED"], name
        assert challenge_params(resp.headers["WWW-Authenticate"])["error"] == "invalid_token"
