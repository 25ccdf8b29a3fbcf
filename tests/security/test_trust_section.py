"""A policy's `trust:` section written wrong (by mistake or to confuse): every bad entry is
reported with where it is, the good ones after it are still read, and one signer name cannot
stand for two kinds of signer."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from policies.signatures.cosign import verify_layer
from policies.signatures.simple_signing import SIGNATURE_ANNOTATION
from policies.signatures.trust import parse_trust
from tests.signing import public_pem, sign, simple_signing_payload, spki, write_rekor_root

IMAGE = "sha256:" + "ab" * 32


def test_every_bad_entry_is_reported_and_the_good_ones_after_it_are_kept(tmp_path: Path) -> None:
    good = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "broken_root.json").write_text("{not json")
    section = {
        "keys": {
            "garbage": {"pem": "not a key"},
            "missing-file": {"pem_file": "nowhere.pub"},
            "bad-rekor": {"pem": public_pem(good).decode(), "rekor": "broken_root.json"},
            "good": {"pem": public_pem(good).decode()},
        },
        "certificates": {
            "no-certs": {"pem": "not a certificate"},
            "also-bad": {"pem": "not a certificate either"},
        },
        "identities": {
            "bad-regex": {"issuer": "https://i.example", "subject_regex": "("},
            "no-root": {"issuer": "https://i.example", "subject": "a@b", "trusted_root": "x.json"},
        },
    }
    config, problems = parse_trust(section, tmp_path)
    where = [path for path, _ in problems]
    assert where == [
        ("keys", "garbage"),
        ("keys", "missing-file"),
        ("keys", "bad-rekor", "rekor"),
        ("certificates", "no-certs"),
        ("certificates", "also-bad"),
        ("identities", "bad-regex", "subject_regex"),
        ("identities", "no-root", "trusted_root"),
    ]
    messages = dict(problems)
    assert messages[("keys", "garbage")].startswith("not a PEM public key")
    assert messages[("keys", "missing-file")] == (
        f"cannot read {tmp_path / 'nowhere.pub'}: No such file or directory"
    )
    assert messages[("identities", "bad-regex", "subject_regex")].startswith(
        "not a valid regular expression"
    )
    # Only the good key is trusted; a later good entry is never lost behind a bad one.
    assert list(config.keys) == ["good"]
    assert not config.certificates and not config.identities


def test_one_name_for_two_signers_is_a_problem() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    section = {
        "keys": {"release": {"pem": public_pem(key).decode()}},
        "certificates": {"release": {"pem": "not a certificate"}},
    }
    _, problems = parse_trust(section)
    assert ((), "signer name release is used twice; names must be unique") not in problems
    section["identities"] = {
        "release": {"issuer": "https://i.example", "subject": "a@b", "trusted_root": "staging"}
    }
    _, problems = parse_trust(section)
    assert ((), "signer name release is used twice; names must be unique") in problems


def test_the_second_trusted_key_is_tried_when_the_first_does_not_verify() -> None:
    first, second = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    section = {
        "keys": {
            "first": {"pem": public_pem(first).decode()},
            "second": {"pem": public_pem(second).decode()},
        }
    }
    config, problems = parse_trust(section)
    assert not problems
    payload = simple_signing_payload("registry.example/prod/web", IMAGE)
    annotations = {SIGNATURE_ANNOTATION: base64.b64encode(sign(second, payload)).decode()}
    assert [(f.valid, f.signer) for f in verify_layer(config, IMAGE, payload, annotations)] == [
        (True, "second")
    ]


def test_an_identity_describes_its_subject_or_its_pattern() -> None:
    section = {
        "identities": {
            "exact": {"issuer": "https://i.example", "subject": "a@b", "trusted_root": "staging"},
            "pattern": {
                "issuer": "https://i.example",
                "subject_regex": "^ci@",
                "trusted_root": "staging",
            },
        }
    }
    config, problems = parse_trust(section)
    assert not problems
    assert config.identities["exact"].describe() == "a@b from https://i.example"
    assert config.identities["pattern"].describe() == "/^ci@/ from https://i.example"


def test_an_unusable_trusted_root_is_a_problem_with_its_reason(tmp_path: Path) -> None:
    """An identity's trusted root without a Fulcio CA (a Rekor-only root, fine for a key's
    `rekor:`), one that is not UTF-8, missing, or not JSON: each refused when the policy loads,
    saying why, never a traceback and never an identity that can prove nothing."""
    write_rekor_root(tmp_path)
    (tmp_path / "latin1.json").write_bytes(b'{"x": "\xe9"}')
    (tmp_path / "broken.json").write_text("{not json")

    def identity(root: str) -> dict[str, str]:
        return {"issuer": "https://i.example", "subject": "a@b", "trusted_root": root}

    section = {
        "identities": {
            "rekor-only": identity("trusted_root.json"),
            "latin1": identity("latin1.json"),
            "missing": identity("nowhere.json"),
            "broken": identity("broken.json"),
            "good": identity("staging"),
        }
    }
    config, problems = parse_trust(section, tmp_path)
    assert list(config.identities) == ["good"]  # read after four bad ones
    messages = dict(problems)
    assert messages[("identities", "rekor-only", "trusted_root")] == (
        f"{tmp_path / 'trusted_root.json'}: not a usable Sigstore trusted root: "
        "Fulcio certificates not found in trusted root"
    )
    assert messages[("identities", "latin1", "trusted_root")] == (
        f"cannot read trusted root {tmp_path / 'latin1.json'}: not UTF-8 text"
    )
    assert messages[("identities", "missing", "trusted_root")] == (
        f"cannot read trusted root {tmp_path / 'nowhere.json'}: No such file or directory"
    )
    assert messages[("identities", "broken", "trusted_root")].startswith(
        f"{tmp_path / 'broken.json'}: not a usable Sigstore trusted root: 1 validation error"
    )
    # The same Rekor-only root is a usable `rekor:` root for a key.
    key = ec.generate_private_key(ec.SECP256R1())
    config, problems = parse_trust(
        {"keys": {"logged": {"pem": public_pem(key).decode(), "rekor": "trusted_root.json"}}},
        tmp_path,
    )
    assert not problems and list(config.keys) == ["logged"]


def test_a_rekor_root_with_a_key_that_is_not_a_key_is_a_problem(tmp_path: Path) -> None:
    """The `sigstore` package accepts the shape; the bytes of the Rekor key are garbage."""
    rekor = write_rekor_root(tmp_path)
    root = (tmp_path / "trusted_root.json").read_text()
    garbage = base64.b64encode(b"garbage").decode()
    (tmp_path / "garbage_key.json").write_text(
        root.replace(base64.b64encode(spki(rekor)).decode(), garbage)
    )
    key = ec.generate_private_key(ec.SECP256R1())
    config, problems = parse_trust(
        {
            "keys": {
                "logged": {"pem": public_pem(key).decode(), "rekor": "garbage_key.json"},
                "plain": {"pem": public_pem(key).decode()},
            }
        },
        tmp_path,
    )
    assert list(config.keys) == ["plain"]
    [(where, message)] = problems
    assert where == ("keys", "logged", "rekor")
    assert message.startswith(
        f"{tmp_path / 'garbage_key.json'}: not a Sigstore trusted root: Could not deserialize key"
    )


def test_every_trusted_root_file_is_watched_and_no_builtin_name_is(tmp_path: Path) -> None:
    """The files whose change reloads the policy: a root file an identity or a key's `rekor:`
    names (a CA or a Rekor key removed from it must take effect), never `staging` or
    `production` (read from the `sigstore` package) taken for a path."""
    write_rekor_root(tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    identity = {"issuer": "https://i.example", "subject": "a@b"}
    config, _ = parse_trust(
        {
            "keys": {
                "logged": {"pem": public_pem(key).decode(), "rekor": "trusted_root.json"},
                "public-rekor": {"pem": public_pem(key).decode(), "rekor": "staging"},
            },
            "identities": {
                "file": {**identity, "trusted_root": "own_root.json"},
                "builtin": {**identity, "trusted_root": "staging"},
                "default": identity,
            },
        },
        tmp_path,
    )
    assert config.files == (
        str(tmp_path / "trusted_root.json"),
        str(tmp_path / "own_root.json"),
    )
