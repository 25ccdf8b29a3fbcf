"""The users file, the token authority and the failed-login counters, one by one."""

from __future__ import annotations

import hashlib
import hmac
import stat
import time

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from registry.auth.ratelimit import FailedLogins
from registry.auth.scopes import parse_scopes
from registry.auth.tokens import InvalidToken, TokenAuthority, load_or_create_key
from registry.auth.users import PasswordRefused, UsersFileError, UserStore, check_password
from registry.cli import main


def test_passwords_are_stored_as_argon2id_and_robot_tokens_as_hashes(tmp_path):
    store = UserStore(tmp_path / "users.yaml")
    store.add_user("alice", "correct horse", ["dev"], replace=False)
    token = store.add_robot("ci", ["ci"], replace=False)
    text = (tmp_path / "users.yaml").read_text()
    assert "correct horse" not in text and token not in text
    document = yaml.safe_load(text)
    # The library's defaults (RFC 9106's low-memory choice), never weakened: the tests' own
    # cheap hashes (tests/auth/conftest.py) are written by the tests, not by the product.
    assert document["users"]["alice"]["password"].startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert len(document["robots"]["ci"]["token_sha256"]) == 64
    assert stat.S_IMODE((tmp_path / "users.yaml").stat().st_mode) == 0o600

    assert store.verify("alice", "correct horse").identity().groups == {"dev"}
    assert store.verify("alice", "wrong") is None
    assert store.verify("nobody", "correct horse") is None
    assert store.verify("ci", token).kind == "robot"
    assert store.verify("ci", token + "x") is None


def test_a_stored_password_that_is_not_an_argon2_hash_logs_nobody_in(tmp_path):
    """A users file edited by hand with a password that is no Argon2 hash (the plain text, a
    truncated hash): no password logs that user in, and none raises; the others still do."""
    store = UserStore(tmp_path / "users.yaml")
    store.add_user("alice", "correct horse", [], replace=False)
    document = yaml.safe_load((tmp_path / "users.yaml").read_text())
    for stored in ("correct horse", "$argon2id$v=19$m=65536,t=3,p=4$", ""):
        document["users"]["bob"] = {"password": stored, "groups": []}
        (tmp_path / "users.yaml").write_text(yaml.safe_dump(document))
        store = UserStore(tmp_path / "users.yaml")
        assert store.verify("bob", "correct horse") is None, stored
        assert store.verify("bob", stored) is None, stored
        assert store.verify("alice", "correct horse") is not None


def test_names_are_checked_and_not_silently_replaced(tmp_path):
    store = UserStore(tmp_path / "users.yaml")
    store.add_user("alice", "pw", [], replace=False)
    with pytest.raises(UsersFileError):
        store.add_user("alice", "pw2", [], replace=False)
    with pytest.raises(UsersFileError):
        store.add_robot("alice", [], replace=False)
    with pytest.raises(UsersFileError):
        store.add_user("Bad:Name", "pw", [], replace=False)
    store.add_user("alice", "pw2", [], replace=True)
    assert store.verify("alice", "pw2") is not None


@pytest.mark.parametrize("group", ["Ops", "ops team", "../admin", "", "ops,dev", "-ops", "a" * 65])
def test_a_group_name_outside_the_grammar_is_refused_and_nothing_is_written(tmp_path, group):
    """A group the permissions could never name as written (upper case, spaces, a list typed as
    one name) is refused by name, whichever place it has among the groups given."""
    store = UserStore(tmp_path / "users.yaml")
    store.add_robot("ci", ["ci"], replace=False)
    before = store.path.read_bytes()
    for groups in ([group], ["ci", group]):
        with pytest.raises(UsersFileError) as refused:
            store.add_robot("builder", groups, replace=False)
        assert str(refused.value) == f"invalid group name {group!r}"
    assert store.path.read_bytes() == before


def test_the_file_is_reread_when_it_changes(tmp_path):
    path = tmp_path / "users.yaml"
    server_view = UserStore(path)
    assert server_view.get("bob") is None
    UserStore(path).add_user("bob", "pw", [], replace=False)
    assert server_view.get("bob") is not None


def test_cli_user_and_robot_add(tmp_path, monkeypatch, capsys):
    import io

    data = tmp_path / "data"
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pw\n"))
    assert main(["user", "add", "carol", "--group", "ops", "--data-dir", str(data)]) == 0
    assert main(["robot", "add", "builder", "--data-dir", str(data)]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("tyr_")
    store = UserStore(data / "auth" / "users.yaml")
    assert store.verify("carol", "s3cret-pw") is not None
    assert store.verify("builder", token) is not None
    assert main(["robot", "remove", "builder", "--data-dir", str(data)]) == 0
    assert store.get("builder") is None


def _authority(tmp_path, **overrides):
    key = load_or_create_key(tmp_path / "key.pem", configured=False)
    settings = {"issuer": "trustyard", "service": "svc", "ttl": 300, "clock_skew": 30}
    return TokenAuthority(key, **{**settings, **overrides})


def test_token_round_trip_and_checks(tmp_path):
    authority = _authority(tmp_path)
    issued = authority.issue("alice", parse_scopes(["repository:a:pull"]))
    claims = authority.verify(issued.token)
    assert claims.subject == "alice"
    assert [str(scope) for scope in claims.access] == ["repository:a:pull"]

    with pytest.raises(InvalidToken):  # expired beyond the skew
        authority.verify(authority.issue("alice", [], now=time.time() - 400).token)
    with pytest.raises(InvalidToken):  # not yet valid beyond the skew
        authority.verify(authority.issue("alice", [], now=time.time() + 120).token)
    with pytest.raises(InvalidToken):  # another audience
        _authority(tmp_path, service="other").verify(issued.token)
    with pytest.raises(InvalidToken):  # another issuer
        _authority(tmp_path, issuer="other").verify(issued.token)
    # Alg confusion: claims the authority would accept, HS256-signed with its public key (what
    # a verifier that lets the token pick the algorithm would check against). More forgeries:
    # tests/security/test_auth_decisions.py.
    from tests.security.test_auth_decisions import forge

    key = load_or_create_key(tmp_path / "key.pem", configured=True)
    public_pem = key.public_key().public_bytes(  # the half anyone may learn
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = {"iss": "trustyard", "sub": "alice", "aud": "svc", "iat": now, "nbf": now}
    claims |= {"exp": now + 60, "access": []}
    forged = forge(
        {"alg": "HS256", "typ": "JWT"},
        claims,
        lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
    )
    with pytest.raises(InvalidToken, match=r"^The specified alg value is not allowed$"):
        authority.verify(forged)
    # The same claims signed with the key itself pass: only the algorithm was wrong.
    assert authority.verify(jwt.encode(claims, key, algorithm="ES256")).subject == "alice"


def test_signing_key_is_created_once_with_mode_0600(tmp_path):
    path = tmp_path / "auth" / "key.pem"
    first = load_or_create_key(path, configured=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_key(path, configured=False)
    assert first.private_numbers() == again.private_numbers()
    with pytest.raises(FileNotFoundError):
        load_or_create_key(tmp_path / "missing.pem", configured=True)


def test_failed_logins_lock_per_user_and_per_source_then_age_out():
    now = [1000.0]
    limits = FailedLogins(window=60, max_per_user=3, max_per_source=5, clock=lambda: now[0])
    for _ in range(3):
        assert limits.retry_after("alice", "10.0.0.1") == 0
        limits.record_failure("alice", "10.0.0.1")
    assert limits.retry_after("alice", "10.0.0.2") == pytest.approx(60)
    assert limits.retry_after("bob", "10.0.0.1") == 0
    for user in ("u1", "u2"):
        limits.record_failure(user, "10.0.0.1")
    assert limits.retry_after("bob", "10.0.0.1") > 0
    now[0] += 61
    assert limits.retry_after("alice", "10.0.0.1") == 0
    limits.record_failure("alice", "10.0.0.3")
    limits.record_success("alice")
    assert limits.retry_after("alice", "10.0.0.3") == 0


@pytest.mark.parametrize("password", ["  leading-space", "trailing-space  ", "\ttabbed-password"])
def test_a_password_with_white_space_around_it_is_refused(password):
    """Pasted with a blank before or after (the blank sorting before or after the rest)."""
    with pytest.raises(PasswordRefused) as refused:
        check_password(password)
    assert str(refused.value) == "password starts or ends with white space; nothing was changed"
    assert check_password("inner white space") == "inner white space"


def test_removing_an_unknown_name_changes_nothing(tmp_path):
    store = UserStore(tmp_path / "users.yaml")
    store.add_user("alice", "alice-secret-pw", [], replace=False)
    before = store.path.stat()
    assert store.remove("nobody") is False
    after = store.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert store.remove("alice") is True and store.get("alice") is None


def test_a_users_file_in_folders_not_made_yet_is_written_with_them(tmp_path):
    """`auth.users_file` may name a path whose folders do not exist yet: they are made (the
    file's own folder private), not refused."""
    store = UserStore(tmp_path / "etc" / "trustyard" / "users.yaml")
    token = store.add_robot("ci", ["ci"], replace=False)
    assert store.verify("ci", token) is not None
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700


def test_password_length_bounds():
    for short in ("", "a", "seven77"):
        with pytest.raises(PasswordRefused):
            check_password(short)
    assert check_password("eight888") == "eight888"
    assert check_password("x" * 1024) == "x" * 1024
    for long in ("x" * 1025, "x" * 5000):
        with pytest.raises(PasswordRefused) as refused:
            check_password(long)
        assert str(refused.value) == "password longer than 1024 characters refused"


@pytest.mark.parametrize("entry", ["just text", {"password": 5}, {"groups": ["dev"]}])
def test_a_users_entry_of_the_wrong_shape_is_refused_with_its_place(tmp_path, entry):
    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump({"users": {"alice": entry}}))
    with pytest.raises(UsersFileError) as refused:
        UserStore(path).get("alice")
    assert str(refused.value) == "users.alice: expected a mapping with 'password'"
