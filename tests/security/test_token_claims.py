"""Bearer tokens signed by the registry's own key whose claims are not what it issues: an access
claim of the wrong shape, a credential claim that is not a string, the wrong audience or issuer.
Each is refused with its reason (an attacker who once got the key's signature on odd claims, or
a token of an older version, must not crash verification or be read leniently)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from registry.auth.tokens import ALGORITHM, CREDENTIAL_CLAIM, InvalidToken, TokenAuthority


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def authority(key: ec.EllipticCurvePrivateKey) -> TokenAuthority:
    return TokenAuthority(key, issuer="trustyard", service="registry", ttl=300, clock_skew=30)


def signed(key: ec.EllipticCurvePrivateKey, **changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "trustyard",
        "sub": "alice",
        "aud": "registry",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}],
        CREDENTIAL_CLAIM: "generation-1",
    }
    claims.update(changes)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm=ALGORITHM)


def test_the_claims_it_issues_verify(key: ec.EllipticCurvePrivateKey) -> None:
    claims = authority(key).verify(signed(key))
    assert (claims.subject, claims.credential) == ("alice", "generation-1")
    assert [str(scope) for scope in claims.access] == ["repository:team/app:pull"]


@pytest.mark.parametrize(
    ("access", "why"),
    [
        ([{"type": "repository", "name": "team/app"}], "malformed access claim: 'actions'"),
        ([{"name": "team/app", "actions": ["pull"]}], "malformed access claim: 'type'"),
        (["repository:team/app:pull"], "malformed access claim: string indices must be integers"),
        (7, "malformed access claim: 'int' object is not iterable"),
        (
            [{"type": "repository", "name": "Team/App", "actions": ["pull"]}],
            "malformed access claim: ",
        ),
    ],
)
def test_an_access_claim_of_the_wrong_shape_is_refused(
    key: ec.EllipticCurvePrivateKey, access: Any, why: str
) -> None:
    with pytest.raises(InvalidToken) as refused:
        authority(key).verify(signed(key, access=access))
    assert str(refused.value).startswith(why)


@pytest.mark.parametrize("credential", [1, None, ["generation-1"], {"g": 1}, True])
def test_a_credential_claim_that_is_not_a_string_is_refused(
    key: ec.EllipticCurvePrivateKey, credential: Any
) -> None:
    token = signed(key, **{CREDENTIAL_CLAIM: credential})
    if credential is None:  # absent: a token of an anonymous caller, bound to no credential
        assert authority(key).verify(token).credential == ""
        return
    with pytest.raises(InvalidToken) as refused:
        authority(key).verify(token)
    assert str(refused.value) == f"malformed {CREDENTIAL_CLAIM} claim: not a string"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"aud": "another-registry"}, "Audience doesn't match"),
        ({"iss": "someone-else"}, "Invalid issuer"),
        ({"exp": int(time.time()) - 3600}, "Signature has expired"),
        ({"iat": int(time.time()) + 3600}, "The token is not yet valid (iat)"),
        ({"nbf": None}, 'Token is missing the "nbf" claim'),
    ],
)
def test_a_token_for_another_audience_issuer_or_time_is_refused(
    key: ec.EllipticCurvePrivateKey, changes: dict[str, Any], why: str
) -> None:
    with pytest.raises(InvalidToken) as refused:
        authority(key).verify(signed(key, **changes))
    assert str(refused.value) == why


def test_a_token_that_is_not_utf8_is_refused(key: ec.EllipticCurvePrivateKey) -> None:
    token = signed(key)
    header, claims, signature = token.split(".")
    with pytest.raises(InvalidToken):
        authority(key).verify(f"{header}.{claims}\udcff.{signature}")
