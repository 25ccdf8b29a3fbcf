"""Sigstore bundles: the sigstore-python vectors (made by Sigstore clients, verified offline against
the production and staging roots shipped in `sigstore`), each failing when one byte of payload,
signature, digest or certificate changes; keyed bundles (cosign 3 with a key) made here with
`cryptography`, with their Rekor entry checked only when the policy asks."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from policies.signatures.bundles import merkle_root, pae, verify_layer
from policies.signatures.findings import Finding
from policies.signatures.trust import TrustConfig, parse_trust
from tests.signing import spki

VECTORS = Path(__file__).parent / "vectors" / "sigstore-python"
GITHUB = "https://token.actions.githubusercontent.com"
RFC8785_RELEASE = (
    "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/tags/v0.1.2"
)
BEACON = "^https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/"
# The statement subject of the DSSE vector (an in-toto SLSA provenance for `a.txt`).
DSSE_SUBJECT = "sha256:a0cfc71271d6e278e57cd332ff957c3f7043fdda354c4cbb190a30d56efa01bf"


def trust(section: dict[str, Any], base: Path = Path(".")) -> TrustConfig:
    config, problems = parse_trust(section, base)
    assert not problems, problems
    return config


PRODUCTION = trust({"identities": {"rfc8785": {"issuer": GITHUB, "subject": RFC8785_RELEASE}}})
GITHUB_LOGIN = "https://github.com/login/oauth"
#: The e-mail each staging bundle's certificate names, by signer name.
STAGING_USERS = {"tny": "a@tny.town", "yossarian": "william@yossarian.net", "jku": "jku@goto.fi"}


def staging(*users: str) -> TrustConfig:
    """Trust these staging signers (each its exact e-mail) and the beacon workflow."""
    identities: dict[str, Any] = {
        name: {"issuer": GITHUB_LOGIN, "subject": STAGING_USERS[name], "trusted_root": "staging"}
        for name in users
    }
    identities["beacon"] = {"issuer": GITHUB, "subject_regex": BEACON, "trusted_root": "staging"}
    return trust({"identities": identities})


STAGING = staging(*STAGING_USERS)

#: (bundle, signed file or subject digest, trust, signer)
REAL = [
    ("bundle_v3_github.whl.sigstore", "bundle_v3_github.whl", PRODUCTION, "rfc8785"),
    ("bundle.txt.sigstore", "bundle.txt", STAGING, "tny"),  # v0.1
    ("bundle_v3.txt.sigstore", "bundle_v3.txt", STAGING, "yossarian"),  # v0.3
    ("staging-rekor-v2.txt.sigstore.json", "staging-rekor-v2.txt", STAGING, "jku"),
    ("a.dsse.staging-rekor-v2.txt.sigstore.json", DSSE_SUBJECT, STAGING, "beacon"),
]


def digest_of(signed: str) -> str:
    if signed.startswith("sha256:"):
        return signed
    return "sha256:" + hashlib.sha256((VECTORS / signed).read_bytes()).hexdigest()


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def edit(bundle: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    document = json.loads(bundle)
    change(document)
    return json.dumps(document).encode()


def flip_b64(holder: dict[str, Any], key: str, at: int) -> None:
    raw = base64.b64decode(holder[key])
    holder[key] = base64.b64encode(flip(raw, at % len(raw))).decode()


def verdicts(findings: list[Finding]) -> list[tuple[bool, str | None]]:
    return [(f.valid, f.signer) for f in findings]


@pytest.mark.parametrize(("bundle", "signed", "config", "signer"), REAL, ids=[r[0] for r in REAL])
def test_real_bundles_verify(bundle: str, signed: str, config: TrustConfig, signer: str) -> None:
    findings = verify_layer(config, digest_of(signed), (VECTORS / bundle).read_bytes())
    assert verdicts(findings) == [(True, signer)]
    assert findings[0].kind == "bundle"


@pytest.mark.parametrize(
    ("bundle", "signed", "user"),
    [
        ("bundle.txt.sigstore", "bundle.txt", "tny"),
        ("bundle_v3.txt.sigstore", "bundle_v3.txt", "yossarian"),
        ("staging-rekor-v2.txt.sigstore.json", "staging-rekor-v2.txt", "jku"),
    ],
)
def test_each_staging_bundle_proves_only_its_own_signer(
    bundle: str, signed: str, user: str
) -> None:
    others = staging(*(name for name in STAGING_USERS if name != user))
    [finding] = verify_layer(others, digest_of(signed), (VECTORS / bundle).read_bytes())
    assert not finding.valid
    assert finding.detail == f"by an unknown identity ({STAGING_USERS[user]} from {GITHUB_LOGIN})"


def test_the_dsse_attestation_exposes_its_predicate_type() -> None:
    content = (VECTORS / "a.dsse.staging-rekor-v2.txt.sigstore.json").read_bytes()
    [finding] = verify_layer(STAGING, DSSE_SUBJECT, content)
    assert finding.predicate_type == "https://slsa.dev/provenance/v1"


@pytest.mark.parametrize(("bundle", "signed", "config", "signer"), REAL, ids=[r[0] for r in REAL])
def test_a_flipped_digest_fails(bundle: str, signed: str, config: TrustConfig, signer: str) -> None:
    digest = digest_of(signed)
    other = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    [finding] = verify_layer(config, other, (VECTORS / bundle).read_bytes())
    assert not finding.valid
    assert finding.detail.startswith("for another image (sha256:")


@pytest.mark.parametrize(("bundle", "signed", "config", "signer"), REAL, ids=[r[0] for r in REAL])
@pytest.mark.parametrize("at", [0, 17, -1])
def test_a_flipped_signature_byte_fails(
    bundle: str, signed: str, config: TrustConfig, signer: str, at: int
) -> None:
    def change(document: dict[str, Any]) -> None:
        if "dsseEnvelope" in document:
            flip_b64(document["dsseEnvelope"]["signatures"][0], "sig", at)
        else:
            flip_b64(document["messageSignature"], "signature", at)

    content = edit((VECTORS / bundle).read_bytes(), change)
    assert [f.valid for f in verify_layer(config, digest_of(signed), content)] == [False]


@pytest.mark.parametrize("at", [0, 100, -2])
def test_a_flipped_dsse_payload_byte_fails(at: int) -> None:
    content = edit(
        (VECTORS / "a.dsse.staging-rekor-v2.txt.sigstore.json").read_bytes(),
        lambda d: flip_b64(d["dsseEnvelope"], "payload", at),
    )
    assert [f.valid for f in verify_layer(STAGING, DSSE_SUBJECT, content)] == [False]


@pytest.mark.parametrize(("bundle", "signed", "config", "signer"), REAL, ids=[r[0] for r in REAL])
@pytest.mark.parametrize("at", [300, 500])  # inside the to-be-signed certificate
def test_a_flipped_certificate_byte_fails(
    bundle: str, signed: str, config: TrustConfig, signer: str, at: int
) -> None:
    def change(document: dict[str, Any]) -> None:
        material = document["verificationMaterial"]
        holder = material.get("certificate") or material["x509CertificateChain"]["certificates"][0]
        flip_b64(holder, "rawBytes", at)

    content = edit((VECTORS / bundle).read_bytes(), change)
    assert [f.valid for f in verify_layer(config, digest_of(signed), content)] == [False]


def test_another_identity_is_named() -> None:
    other = trust({"identities": {"rfc8785": {"issuer": GITHUB, "subject": "https://x/y"}}})
    content = (VECTORS / "bundle_v3_github.whl.sigstore").read_bytes()
    [finding] = verify_layer(other, digest_of("bundle_v3_github.whl"), content)
    assert not finding.valid
    assert finding.detail == f"by an unknown identity ({RFC8785_RELEASE} from {GITHUB})"


def test_a_staging_bundle_does_not_verify_against_production() -> None:
    content = (VECTORS / "bundle_v3.txt.sigstore").read_bytes()
    findings = verify_layer(
        trust(
            {"identities": {"any": {"issuer": "https://github.com/login/oauth", "subject": "x"}}}
        ),
        digest_of("bundle_v3.txt"),
        content,
    )
    assert [f.valid for f in findings] == [False]


def test_not_a_bundle() -> None:
    [finding] = verify_layer(PRODUCTION, "sha256:" + "0" * 64, b"{}")
    assert not finding.valid and finding.detail == "not a Sigstore bundle"


@pytest.mark.parametrize("content", [b"not json", b"\xff{}", b"[]", b'"a bundle"', b"{}"])
def test_bytes_that_are_not_a_bundle_are_refused_so(content: bytes) -> None:
    """Not JSON, not UTF-8, JSON of another shape, no `verificationMaterial`: each the same
    reason, never a traceback."""
    [finding] = verify_layer(PRODUCTION, "sha256:" + "0" * 64, content)
    assert (finding.valid, finding.kind, finding.detail) == (
        False,
        "bundle",
        "not a Sigstore bundle",
    )


def test_a_bundle_of_an_unknown_media_type_is_refused_with_it() -> None:
    content = json.dumps({"mediaType": "text/plain", "verificationMaterial": {}}).encode()
    [finding] = verify_layer(PRODUCTION, "sha256:" + "0" * 64, content)
    assert (finding.valid, finding.detail) == (False, "unknown bundle media type 'text/plain'")


# Keyed bundles (cosign 3 `cosign sign --key`): a DSSE envelope over an in-toto statement, a
# public key hint instead of a certificate.

IMAGE = "sha256:" + hashlib.sha256(b"an image manifest").hexdigest()
COSIGN_SIGN = "https://sigstore.dev/cosign/sign/v1"


def pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def statement(
    digest: str, predicate_type: str = COSIGN_SIGN, name: str = "registry.example/prod/web"
) -> bytes:
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": name, "digest": {"sha256": digest[7:]}}],
            "predicateType": predicate_type,
            "predicate": {},
        }
    ).encode()


def keyed_bundle(
    key: ec.EllipticCurvePrivateKey, payload: bytes, entries: list[dict[str, Any]] | None = None
) -> tuple[dict[str, Any], bytes]:
    """A v0.3 keyed bundle as cosign 3 writes it, and the DSSE signature."""
    signature = key.sign(pae("application/vnd.in-toto+json", payload), ec.ECDSA(hashes.SHA256()))
    bundle = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {
            "publicKey": {"hint": base64.b64encode(hashlib.sha256(spki(key)).digest()).decode()},
            "tlogEntries": entries or [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": "application/vnd.in-toto+json",
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
    return bundle, signature


def dsse_entry_body(key: ec.EllipticCurvePrivateKey, payload: bytes, signature: bytes) -> bytes:
    """A Rekor v1 `dsse` 0.0.1 entry body for the envelope."""
    return json.dumps(
        {
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": {"algorithm": "sha256", "value": "00" * 32},
                "payloadHash": {
                    "algorithm": "sha256",
                    "value": hashlib.sha256(payload).hexdigest(),
                },
                "signatures": [
                    {
                        "signature": base64.b64encode(signature).decode(),
                        "verifier": base64.b64encode(pem(key).encode()).decode(),
                    }
                ],
            },
        },
        separators=(",", ":"),
    ).encode()


def promised_entry(rekor: ec.EllipticCurvePrivateKey, body: bytes) -> dict[str, Any]:
    """A Rekor v1 entry with its signed entry timestamp."""
    log_id = hashlib.sha256(spki(rekor)).digest()
    entry = {
        "logIndex": "42",
        "logId": {"keyId": base64.b64encode(log_id).decode()},
        "kindVersion": {"kind": "dsse", "version": "0.0.1"},
        "integratedTime": "1700000000",
        "canonicalizedBody": base64.b64encode(body).decode(),
    }
    canonical = rfc8785.dumps(
        {
            "body": entry["canonicalizedBody"],
            "integratedTime": 1700000000,
            "logID": log_id.hex(),
            "logIndex": 42,
        }
    )
    entry["inclusionPromise"] = {
        "signedEntryTimestamp": base64.b64encode(
            rekor.sign(canonical, ec.ECDSA(hashes.SHA256()))
        ).decode()
    }
    return entry


def _tree_hash(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    left, right = _tree_hash(leaves[:split]), _tree_hash(leaves[split:])
    return hashlib.sha256(b"\x01" + left + right).digest()


def _path(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 audit path, leaf to root."""
    if len(leaves) == 1:
        return []
    split = 1 << ((len(leaves) - 1).bit_length() - 1)
    if index < split:
        return [*_path(index, leaves[:split]), _tree_hash(leaves[split:])]
    return [*_path(index - split, leaves[split:]), _tree_hash(leaves[:split])]


def proved_entry(rekor: ec.EllipticCurvePrivateKey, body: bytes) -> dict[str, Any]:
    """A Rekor entry with an inclusion proof (leaf 5 of 7) and a signed checkpoint."""
    leaves = [b"leaf %d" % i for i in range(7)]
    leaves[5] = body
    root = _tree_hash(leaves)
    note = f"rekor.example - 1\n7\n{base64.b64encode(root).decode()}\n"
    signature = rekor.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
    hint = hashlib.sha256(spki(rekor)).digest()[:4]
    line = f"\u2014 rekor.example {base64.b64encode(hint + signature).decode()}\n"
    return {
        "logIndex": "5",
        "logId": {"keyId": base64.b64encode(hashlib.sha256(spki(rekor)).digest()).decode()},
        "kindVersion": {"kind": "dsse", "version": "0.0.1"},
        "canonicalizedBody": base64.b64encode(body).decode(),
        "inclusionProof": {
            "logIndex": "5",
            "treeSize": "7",
            "rootHash": base64.b64encode(root).decode(),
            "hashes": [base64.b64encode(h).decode() for h in _path(5, leaves)],
            "checkpoint": {"envelope": note + "\n" + line},
        },
    }


@pytest.mark.parametrize("size", range(1, 12))
def test_merkle_inclusion_every_position(size: int) -> None:
    leaves = [b"%d" % i for i in range(size)]
    for index in range(size):
        assert merkle_root(index, size, leaves[index], _path(index, leaves)) == _tree_hash(leaves)


def test_a_keyed_bundle_verifies() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bundle, _ = keyed_bundle(key, statement(IMAGE))
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    findings = verify_layer(config, IMAGE, json.dumps(bundle).encode())
    assert verdicts(findings) == [(True, "release")]
    assert findings[0].kind == "bundle-keyed"
    assert findings[0].predicate_type == COSIGN_SIGN


def test_a_keyed_bundle_by_another_key_is_unknown() -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    bundle, _ = keyed_bundle(other, statement(IMAGE))
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    [finding] = verify_layer(config, IMAGE, json.dumps(bundle).encode())
    assert not finding.valid and finding.detail.startswith("by an unknown key (sha256:")


@pytest.mark.parametrize("what", ["payload", "signature"])
@pytest.mark.parametrize("at", [0, 30, -1])
def test_a_keyed_bundle_with_a_flipped_byte_fails(what: str, at: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bundle, _ = keyed_bundle(key, statement(IMAGE))
    envelope = bundle["dsseEnvelope"]
    if what == "payload":
        flip_b64(envelope, "payload", at)
    else:
        flip_b64(envelope["signatures"][0], "sig", at)
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    assert [f.valid for f in verify_layer(config, IMAGE, json.dumps(bundle).encode())] == [False]


def test_a_keyed_bundle_missing_a_field_is_not_a_bundle() -> None:
    """A DSSE envelope without its payload type, a signature entry without `sig`, a payload
    type that is no text (a lone surrogate: `UnicodeEncodeError`, a `ValueError`): "not a
    Sigstore bundle", never a traceback."""
    key = ec.generate_private_key(ec.SECP256R1())
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    no_type, _ = keyed_bundle(key, statement(IMAGE))
    del no_type["dsseEnvelope"]["payloadType"]
    no_sig, _ = keyed_bundle(key, statement(IMAGE))
    no_sig["dsseEnvelope"]["signatures"] = [{"keyid": ""}]
    surrogate, _ = keyed_bundle(key, statement(IMAGE))
    surrogate["dsseEnvelope"]["payloadType"] = "\ud800"
    for bundle in (no_type, no_sig, surrogate):
        found = verify_layer(config, IMAGE, json.dumps(bundle).encode())
        assert [(f.valid, f.kind, f.detail) for f in found] == [
            (False, "bundle-keyed", "not a Sigstore bundle")
        ], bundle


def test_a_keyed_bundle_for_another_image_fails() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = "sha256:" + "ab" * 32
    bundle, _ = keyed_bundle(key, statement(other))
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    [finding] = verify_layer(config, IMAGE, json.dumps(bundle).encode())
    assert not finding.valid and finding.detail == "for another image (sha256:abababababab…)"


def test_rekor_is_checked_only_when_the_policy_asks(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bundle, _ = keyed_bundle(key, statement(IMAGE))  # not logged
    content = json.dumps(bundle).encode()
    lax = trust({"keys": {"release": {"pem": pem(key)}}})
    strict = trust({"keys": {"release": {"pem": pem(key), "rekor": "trusted_root.json"}}}, tmp_path)
    assert verdicts(verify_layer(lax, IMAGE, content)) == [(True, "release")]
    [finding] = verify_layer(strict, IMAGE, content)
    assert not finding.valid and finding.detail.startswith("not logged in Rekor")


@pytest.mark.parametrize("make_entry", [promised_entry, proved_entry], ids=["set", "proof"])
def test_a_logged_keyed_bundle_verifies_and_fails_when_altered(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey, make_entry: Any
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    payload = statement(IMAGE)
    _, signature = keyed_bundle(key, payload)
    # ECDSA signatures are randomised: sign once, log that very signature.
    bundle, _ = keyed_bundle(key, payload)
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(signature).decode()
    entry = make_entry(rekor, dsse_entry_body(key, payload, signature))
    bundle["verificationMaterial"]["tlogEntries"] = [entry]
    strict = trust({"keys": {"release": {"pem": pem(key), "rekor": "trusted_root.json"}}}, tmp_path)
    assert verdicts(verify_layer(strict, IMAGE, json.dumps(bundle).encode())) == [(True, "release")]

    # The entry logs another signature.
    _, other_signature = keyed_bundle(key, payload)
    logged_other = make_entry(rekor, dsse_entry_body(key, payload, other_signature))
    bundle["verificationMaterial"]["tlogEntries"] = [logged_other]
    [finding] = verify_layer(strict, IMAGE, json.dumps(bundle).encode())
    assert not finding.valid and finding.detail == "the Rekor entry logs another signature"

    # The SET or the checkpoint signature altered.
    altered = json.loads(json.dumps(entry))
    if "inclusionPromise" in altered:
        flip_b64(altered["inclusionPromise"], "signedEntryTimestamp", 10)
    else:
        altered["inclusionProof"]["hashes"][0] = base64.b64encode(b"\x00" * 32).decode()
    bundle["verificationMaterial"]["tlogEntries"] = [altered]
    [finding] = verify_layer(strict, IMAGE, json.dumps(bundle).encode())
    assert not finding.valid and finding.detail.startswith("the Rekor")


def test_a_rekor_entry_of_another_shape_is_malformed(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    """A keyed bundle whose log entry is not an object, or whose body is base64 of something
    else, under a policy that asks for Rekor: "the Rekor entry is malformed", not a traceback."""
    key = ec.generate_private_key(ec.SECP256R1())
    bundle, _ = keyed_bundle(key, statement(IMAGE))
    strict = trust({"keys": {"release": {"pem": pem(key), "rekor": "trusted_root.json"}}}, tmp_path)
    for entry in (5, "an entry", {"canonicalizedBody": base64.b64encode(b"{not json").decode()}):
        bundle["verificationMaterial"]["tlogEntries"] = [entry]
        [finding] = verify_layer(strict, IMAGE, json.dumps(bundle).encode())
        assert (finding.valid, finding.detail) == (False, "the Rekor entry is malformed"), entry


def test_a_checkpoint_signed_by_another_key_fails(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    payload = statement(IMAGE)
    bundle, signature = keyed_bundle(key, payload)
    impostor = ec.generate_private_key(ec.SECP256R1())
    bundle["verificationMaterial"]["tlogEntries"] = [
        proved_entry(impostor, dsse_entry_body(key, payload, signature))
    ]
    strict = trust({"keys": {"release": {"pem": pem(key), "rekor": "trusted_root.json"}}}, tmp_path)
    [finding] = verify_layer(strict, IMAGE, json.dumps(bundle).encode())
    assert finding.detail == "the Rekor checkpoint is not signed by a trusted Rekor key"


def test_a_keyed_message_signature_over_the_image_digest() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    digest = bytes.fromhex(IMAGE[7:])
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    signature = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    bundle = {
        "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "verificationMaterial": {"publicKey": {"hint": ""}, "tlogEntries": []},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": base64.b64encode(digest).decode()},
            "signature": base64.b64encode(signature).decode(),
        },
    }
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    content = json.dumps(bundle).encode()
    assert verdicts(verify_layer(config, IMAGE, content)) == [(True, "release")]
    [finding] = verify_layer(config, "sha256:" + "0" * 64, content)
    assert not finding.valid and finding.detail.startswith("for another image")


def test_a_keyed_message_digest_of_another_length_proves_nothing() -> None:
    """A message digest shorter or longer than SHA-256's is verified by no key (`cryptography`
    raises `ValueError` for a prehashed digest of the wrong size): an unknown signer, like any
    signature no trusted key made, never "not a Sigstore bundle" nor a traceback."""
    key = ec.generate_private_key(ec.SECP256R1())
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    signature = base64.b64encode(key.sign(b"x", ec.ECDSA(hashes.SHA256()))).decode()
    for digest in (b"\x01" * 20, b"\x01" * 64):
        bundle = {
            "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.2",
            "verificationMaterial": {"publicKey": {"hint": ""}, "tlogEntries": []},
            "messageSignature": {
                "messageDigest": {
                    "algorithm": "SHA2_256",
                    "digest": base64.b64encode(digest).decode(),
                },
                "signature": signature,
            },
        }
        content = json.dumps(bundle).encode()
        [finding] = verify_layer(config, IMAGE, content)
        assert (finding.valid, finding.kind, finding.signer) == (False, "bundle-keyed", None)
        assert finding.detail.startswith("by an unknown key (sha256:"), finding.detail


def intoto_entry_body(key: ec.EllipticCurvePrivateKey, payload: bytes, signature: bytes) -> bytes:
    """A Rekor v1 `intoto` 0.0.2 entry body for the envelope (what cosign `attest` logs): the
    payload and signatures as base64 of their base64 text."""

    def twice(data: bytes) -> str:
        return base64.b64encode(base64.b64encode(data)).decode()

    return json.dumps(
        {
            "apiVersion": "0.0.2",
            "kind": "intoto",
            "spec": {
                "content": {
                    "envelope": {
                        "payload": twice(payload),
                        "payloadType": "application/vnd.in-toto+json",
                        "signatures": [
                            {"sig": twice(signature), "publicKey": twice(pem(key).encode())}
                        ],
                    },
                    "hash": {"algorithm": "sha256", "value": "00" * 32},
                    "payloadHash": {
                        "algorithm": "sha256",
                        "value": hashlib.sha256(payload).hexdigest(),
                    },
                }
            },
        },
        separators=(",", ":"),
    ).encode()


def test_a_keyed_bundle_logged_as_intoto_verifies_and_fails_when_it_logs_another(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    payload = statement(IMAGE)
    bundle, signature = keyed_bundle(key, payload)
    entry = promised_entry(rekor, intoto_entry_body(key, payload, signature))
    entry["kindVersion"] = {"kind": "intoto", "version": "0.0.2"}
    bundle["verificationMaterial"]["tlogEntries"] = [entry]
    strict = trust({"keys": {"release": {"pem": pem(key), "rekor": "trusted_root.json"}}}, tmp_path)
    assert verdicts(verify_layer(strict, IMAGE, json.dumps(bundle).encode())) == [(True, "release")]

    _, other_signature = keyed_bundle(key, payload)
    other = promised_entry(rekor, intoto_entry_body(key, payload, other_signature))
    bundle["verificationMaterial"]["tlogEntries"] = [other]
    [finding] = verify_layer(strict, IMAGE, json.dumps(bundle).encode())
    assert finding.detail == "the Rekor entry logs another signature"

    other_payload = statement(IMAGE, "https://slsa.dev/provenance/v1")
    logged = promised_entry(rekor, intoto_entry_body(key, other_payload, signature))
    bundle["verificationMaterial"]["tlogEntries"] = [logged]
    [finding] = verify_layer(strict, IMAGE, json.dumps(bundle).encode())
    assert finding.detail == "the Rekor entry logs another payload"
