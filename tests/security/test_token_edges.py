"""The token authority's own checks at their edges: the verified-token cache at the exact instants
its window opens and closes, its smallest size, and a signing key of another curve or type
(a configured key is the operator's file: one that is not P-256 must stop the start, never sign
tokens no client expects)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from registry.auth.token_cache import VerifiedTokens
from registry.auth.tokens import key_id, load_or_create_key


def test_a_cached_token_answers_exactly_inside_its_window() -> None:
    cache: VerifiedTokens[str] = VerifiedTokens()
    cache.put("token", "claims", valid_from=100.0, valid_until=200.0)
    assert cache.get("token", 99.5) is None  # before the window: not answered (and dropped)
    cache.put("token", "claims", valid_from=100.0, valid_until=200.0)
    assert cache.get("token", 100.0) == "claims"  # the first instant it is valid
    assert cache.get("token", 199.999) == "claims"
    assert cache.get("token", 200.0) is None  # `exp` + skew: verification refuses it there
    assert cache.get("token", 150.0) is None  # and it was dropped, not kept for later
    assert len(cache) == 0


def test_a_cache_of_one_token_keeps_the_last_one() -> None:
    cache: VerifiedTokens[str] = VerifiedTokens(1)
    cache.put("first", "a", valid_from=0.0, valid_until=10.0)
    cache.put("second", "b", valid_from=0.0, valid_until=10.0)
    assert (cache.get("first", 5.0), cache.get("second", 5.0)) == (None, "b")
    with pytest.raises(ValueError, match="max_entries must be at least 1"):
        VerifiedTokens(0)


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256K1()),  # the curve names sort before and after P-256's
        ec.generate_private_key(ec.SECP384R1()),
        ec.generate_private_key(ec.SECP521R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["secp256k1", "p384", "p521", "rsa", "ed25519"],
)
def test_a_signing_key_that_is_not_p256_is_refused(tmp_path: Path, key: object) -> None:
    path = tmp_path / "signing.pem"
    path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError) as refused:
        load_or_create_key(path, configured=True)
    assert str(refused.value) == f"{path}: the token signing key must be an EC P-256 private key"


def test_a_key_another_process_created_first_is_used_not_replaced(tmp_path: Path) -> None:
    """Two servers starting on one data directory at once: the one that loses the race to
    create the signing key signs with the winner's (else each refuses the other's tokens)."""
    from registry.auth import tokens

    path = tmp_path / "auth" / "signing-key.pem"
    winner = tokens._create_key(path)
    assert tokens._create_key(path) == winner == path.read_bytes()
    assert load_or_create_key(path, configured=False).private_numbers() == (
        serialization.load_pem_private_key(winner, None).private_numbers()  # type: ignore[union-attr]
    )


@pytest.mark.parametrize("late", [200.5, 201.0, 10_000.0])
def test_a_cached_token_is_never_answered_after_its_window(late: float) -> None:
    """An expired token is verified again (and refused), however long after its expiry."""
    cache: VerifiedTokens[str] = VerifiedTokens()
    cache.put("token", "claims", valid_from=100.0, valid_until=200.0)
    assert cache.get("token", late) is None
    assert len(cache) == 0


def test_a_key_being_written_is_never_read_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve --workers N` on a fresh data directory: every worker looks for the signing key at
    once. A worker that finds another still writing it must not read a half-written file (its
    start would fail and stop the registry): it sees no key or a whole one, and all end up
    signing with the same key."""
    path = tmp_path / "auth" / "token-signing-key.pem"
    paused, resume = threading.Event(), threading.Event()
    real_fdopen = os.fdopen

    def slow_fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "first":  # the first writer stops mid-write
            paused.set()
            resume.wait(10)
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", slow_fdopen)
    loaded: dict[str, str] = {}

    def first() -> None:
        loaded["first"] = key_id(load_or_create_key(path, configured=False))

    writer = threading.Thread(target=first, name="first")
    writer.start()
    assert paused.wait(10)
    second = key_id(load_or_create_key(path, configured=False))  # while the first writes
    resume.set()
    writer.join(10)
    assert loaded["first"] == second == key_id(load_or_create_key(path, configured=False))
    assert [p.name for p in path.parent.iterdir()] == ["token-signing-key.pem"]
    assert path.stat().st_mode & 0o777 == 0o600
