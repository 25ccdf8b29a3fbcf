"""Bearer tokens: short-lived ES256 JWTs bound to this registry's service and issuer.

The signing key is an EC P-256 private key in PEM: configured (`auth.token.signing_key`), or
generated on first start into `<data_dir>/auth/token-signing-key.pem` with mode 0600. A token
carries the granted scopes in the `access` claim, as the Docker registry token protocol does.
Verification checks the signature (ES256 only: no `none`, no HMAC confusion), `iss`, `aud`,
`exp`, `nbf` and `iat`, tolerating `clock_skew` seconds of drift. A token that passed is
remembered by its exact bytes until it expires (`registry.auth.token_cache`), so the signature
of the token a client sends with every request is checked once, not per request.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry.auth.scopes import Scope, ScopeError, parse_scope
from registry.auth.token_cache import MAX_TOKENS, VerifiedTokens

ALGORITHM = "ES256"
#: The claim binding a token to the generation of its subject's credential.
CREDENTIAL_CLAIM = "cred"


class InvalidToken(Exception):
    """A bearer token that is not one of ours, or no longer valid; the message says why."""


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: who it was issued to and what it grants."""

    subject: str
    access: tuple[Scope, ...]
    expires_at: float
    #: The generation of the subject's credential when the token was issued (`Account.credential`;
    #: empty for anonymous tokens): a token outlives no change of password or robot token.
    credential: str = ""


@dataclass(frozen=True)
class IssuedToken:
    """A freshly signed token and its lifetime, as the token endpoint answers it."""

    token: str
    expires_in: int
    issued_at: float


def load_or_create_key(path: Path, *, configured: bool) -> ec.EllipticCurvePrivateKey:
    """The signing key at `path`; generated there (mode 0600) when absent and not configured."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if configured:
            raise
        data = _create_key(path)
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path}: the token signing key must be an EC P-256 private key")
    return key


def _create_key(path: Path) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Written whole under a private name, then linked into place: another process (a worker
    # starting beside this one) sees either no key or a complete one, never a half-written file,
    # and the first link wins.
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(partial, path)
        except FileExistsError:  # another process created it first: use theirs
            return path.read_bytes()
    finally:
        partial.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return pem


def key_id(key: ec.EllipticCurvePrivateKey) -> str:
    """A stable identifier of the public key (the `kid` header)."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b32encode(hashlib.sha256(der).digest()[:15]).decode()


class TokenAuthority:
    """Issues and verifies this registry's bearer tokens."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        *,
        issuer: str,
        service: str,
        ttl: float,
        clock_skew: float,
        max_cached: int = MAX_TOKENS,
    ) -> None:
        self._key = key
        self._public = key.public_key()
        self._kid = key_id(key)
        self.issuer = issuer
        self.service = service
        self.ttl = ttl
        self.clock_skew = clock_skew
        #: Tokens verified by this authority (its key, issuer and audience), until they expire.
        self.verified: VerifiedTokens[TokenClaims] = VerifiedTokens(max_cached)

    def issue(
        self,
        subject: str,
        access: list[Scope],
        *,
        credential: str = "",
        now: float | None = None,
    ) -> IssuedToken:
        """Sign a token for `subject` (empty for anonymous) granting `access`, bound to the
        generation of the subject's credential (`Account.credential`)."""
        issued = time.time() if now is None else now
        expires_in = max(1, int(self.ttl))
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "iat": int(issued),
            "nbf": int(issued),
            "exp": int(issued) + expires_in,
            "jti": secrets.token_urlsafe(16),
            "access": [scope.claim() for scope in access],
            CREDENTIAL_CLAIM: credential,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self._kid})
        return IssuedToken(token, expires_in, issued)

    def verify(self, token: str) -> TokenClaims:
        """The claims of a valid token; `InvalidToken` for anything else.

        A token verified before is answered from `verified` while inside the window its first
        verification accepted; outside it, or never seen, the token is verified in full.
        """
        cached = self.verified.get(token, time.time())
        if cached is not None:
            return cached
        try:
            claims = jwt.decode(
                token,
                self._public,
                algorithms=[ALGORITHM],
                audience=self.service,
                issuer=self.issuer,
                leeway=self.clock_skew,
                options={"require": ["iss", "sub", "aud", "exp", "nbf", "iat"]},
            )
        except (jwt.PyJWTError, ValueError) as exc:  # ValueError: bytes that are not UTF-8
            raise InvalidToken(str(exc)) from None
        if int(claims["iat"]) > time.time() + self.clock_skew:
            raise InvalidToken("token issued in the future")
        try:
            access = tuple(_scopes(claims.get("access", [])))
        except (ScopeError, KeyError, TypeError) as exc:
            raise InvalidToken(f"malformed access claim: {exc}") from None
        credential = claims.get(CREDENTIAL_CLAIM, "")
        if not isinstance(credential, str):
            raise InvalidToken(f"malformed {CREDENTIAL_CLAIM} claim: not a string")
        verified = TokenClaims(str(claims["sub"]), access, float(claims["exp"]), credential)
        # The window PyJWT and the check above accept, with their integer reading of the
        # claims (PyJWT checked `int()` takes them): nbf and iat no later than now + skew, exp
        # later than now - skew.
        self.verified.put(
            token,
            verified,
            valid_from=max(int(claims["nbf"]), int(claims["iat"])) - self.clock_skew,
            valid_until=int(claims["exp"]) + self.clock_skew,
        )
        return verified


def _scopes(entries: list[dict[str, Any]]) -> list[Scope]:
    scopes = []
    for entry in entries:
        actions = ",".join(str(action) for action in entry["actions"])
        scopes.append(parse_scope(f"{entry['type']}:{entry['name']}:{actions}"))
    return scopes
