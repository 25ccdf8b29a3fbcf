"""What binds a Sigstore bundle to this image and to its Rekor entry, attacked where a comparison
could be read as an ordering: a message signature over a digest that sorts before or after the
image's, an `intoto` entry logging a payload whose hash sorts either way, an entry of another
kind shaped like an `intoto` one, a malformed entry body or a field that is not base64; and a
keyless bundle whose signer is trusted under the second of two trusted roots.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from policies.signatures.bundles import pae, verify_layer
from tests.policies.test_signatures_bundles import (
    GITHUB,
    GITHUB_LOGIN,
    IMAGE,
    RFC8785_RELEASE,
    STAGING_USERS,
    VECTORS,
    digest_of,
    dsse_entry_body,
    intoto_entry_body,
    keyed_bundle,
    pem,
    promised_entry,
    statement,
    trust,
)
from tests.signing import write_rekor_root


@pytest.fixture
def rekor(tmp_path: Path) -> ec.EllipticCurvePrivateKey:
    return write_rekor_root(tmp_path)


def verdict(config: Any, image: str, bundle: dict[str, Any] | bytes) -> tuple[bool, str]:
    content = bundle if isinstance(bundle, bytes) else json.dumps(bundle).encode()
    [finding] = verify_layer(config, image, content)
    return finding.valid, (finding.signer or "") if finding.valid else finding.detail


@pytest.mark.parametrize("image", ["sha256:" + "0" * 64, "sha256:" + "f" * 64])
def test_a_message_signature_of_another_digest_proves_nothing_whichever_way_it_sorts(
    image: str,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    digest = bytes.fromhex(IMAGE[7:])
    bundle = {
        "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "verificationMaterial": {"publicKey": {"hint": ""}, "tlogEntries": []},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": base64.b64encode(digest).decode()},
            "signature": base64.b64encode(
                key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
            ).decode(),
        },
    }
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    assert verdict(config, IMAGE, bundle) == (True, "release")
    assert verdict(config, image, bundle) == (False, f"for another image ({IMAGE[:19]}…)")


def payloads_sorting_around(real: bytes) -> tuple[bytes, bytes]:
    """Two statements for the image whose sha256 (hex) sorts before and after `real`'s."""
    mine = hashlib.sha256(real).hexdigest()
    before = after = None
    n = 0
    while before is None or after is None:
        n += 1
        other = statement(IMAGE, f"https://example.com/predicate/{n}")
        value = hashlib.sha256(other).hexdigest()
        if value < mine:
            before = other
        elif value > mine:
            after = other
    return before, after


def strict(folder: Path, key: Any) -> Any:
    return trust({"keys": {"release": {"pem": pem(key), "rekor": "trusted_root.json"}}}, folder)


def intoto_logged(rekor: Any, body: bytes, kind: str = "intoto") -> dict[str, Any]:
    entry = promised_entry(rekor, body)
    entry["kindVersion"] = {"kind": kind, "version": "0.0.2"}
    return entry


def test_an_intoto_entry_logging_another_payload_is_refused_whichever_way_its_hash_sorts(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    payload = statement(IMAGE)
    bundle, signature = keyed_bundle(key, payload)
    bundle["verificationMaterial"]["tlogEntries"] = [
        intoto_logged(rekor, intoto_entry_body(key, payload, signature))
    ]
    assert verdict(strict(tmp_path, key), IMAGE, bundle) == (True, "release")
    for other in payloads_sorting_around(payload):
        body = json.loads(intoto_entry_body(key, payload, signature))
        body["spec"]["content"]["payloadHash"]["value"] = hashlib.sha256(other).hexdigest()
        entry = intoto_logged(rekor, json.dumps(body, separators=(",", ":")).encode())
        bundle["verificationMaterial"]["tlogEntries"] = [entry]
        assert verdict(strict(tmp_path, key), IMAGE, bundle) == (
            False,
            "the Rekor entry logs another payload",
        )


@pytest.mark.parametrize("kind", ["rekord", "tuf", "jar", "hashedrekord", "intoto2"])
def test_an_entry_of_another_kind_shaped_like_intoto_is_refused(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey, kind: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    payload = statement(IMAGE)
    bundle, signature = keyed_bundle(key, payload)
    body = json.loads(intoto_entry_body(key, payload, signature))
    body["kind"] = kind
    entry = intoto_logged(rekor, json.dumps(body, separators=(",", ":")).encode(), kind)
    bundle["verificationMaterial"]["tlogEntries"] = [entry]
    assert verdict(strict(tmp_path, key), IMAGE, bundle) == (
        False,
        f"Rekor entry kind {kind!r} does not log this bundle's content",
    )


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"kind": "dsse", "spec": {}}', b'{"kind": "dsse", "spec": []}'],
)
def test_a_malformed_entry_body_is_refused_with_a_reason(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey, body: bytes
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bundle, _ = keyed_bundle(key, statement(IMAGE))
    bundle["verificationMaterial"]["tlogEntries"] = [promised_entry(rekor, body)]
    assert verdict(strict(tmp_path, key), IMAGE, bundle) == (False, "the Rekor entry is malformed")


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("payload", "the DSSE payload is not base64"),
        ("sig", "a DSSE signature is not base64"),
    ],
)
@pytest.mark.parametrize("text", ["not base64!", "ZZ\u00e9Z"], ids=["ascii", "not-ascii"])
def test_a_field_that_is_not_base64_is_refused_with_its_name(
    where: str, reason: str, text: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bundle, _ = keyed_bundle(key, statement(IMAGE))
    envelope = bundle["dsseEnvelope"]
    if where == "payload":
        envelope["payload"] = text
    else:
        envelope["signatures"][0]["sig"] = text
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    assert verdict(config, IMAGE, bundle) == (False, reason)


def test_the_second_trusted_root_is_tried_when_the_first_does_not_verify() -> None:
    """A staging bundle, with a production identity listed first: the staging root still
    proves it."""
    config = trust(
        {
            "identities": {
                "rfc8785": {"issuer": GITHUB, "subject": RFC8785_RELEASE},
                "tny": {
                    "issuer": GITHUB_LOGIN,
                    "subject": STAGING_USERS["tny"],
                    "trusted_root": "staging",
                },
            }
        }
    )
    content = (VECTORS / "bundle.txt.sigstore").read_bytes()
    assert verdict(config, digest_of("bundle.txt"), content) == (True, "tny")


def test_junk_around_valid_base64_is_refused() -> None:
    """Base64 is read strictly: junk a lenient decoder would skip is a refusal, so no other
    verifier can read these fields differently."""
    key = ec.generate_private_key(ec.SECP256R1())
    bundle, _ = keyed_bundle(key, statement(IMAGE))
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    assert verdict(config, IMAGE, bundle) == (True, "release")
    envelope = bundle["dsseEnvelope"]
    envelope["payload"] = "!" + envelope["payload"] + "\n!"
    assert verdict(config, IMAGE, bundle) == (False, "the DSSE payload is not base64")


@pytest.mark.parametrize("payload_type", ["application/json", "application/vnd.zz+json", ""])
def test_a_dsse_payload_of_another_type_is_refused(payload_type: str) -> None:
    """A genuine signature over a payload typed as something other than an in-toto statement,
    whichever way the type sorts."""
    key = ec.generate_private_key(ec.SECP256R1())
    payload = statement(IMAGE)
    bundle, _ = keyed_bundle(key, payload)
    signature = key.sign(pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
    bundle["dsseEnvelope"]["payloadType"] = payload_type
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(signature).decode()
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    assert verdict(config, IMAGE, bundle) == (
        False,
        f"a DSSE payload of type {payload_type!r}, not an in-toto statement",
    )


@pytest.mark.parametrize("algorithm", ["SHA1", "SHA2_384", "SHA2_512", "sha2_256"])
def test_a_message_digest_of_another_algorithm_is_refused(algorithm: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    digest = bytes.fromhex(IMAGE[7:])
    bundle = {
        "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "verificationMaterial": {"publicKey": {"hint": ""}, "tlogEntries": []},
        "messageSignature": {
            "messageDigest": {"algorithm": algorithm, "digest": base64.b64encode(digest).decode()},
            "signature": base64.b64encode(
                key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
            ).decode(),
        },
    }
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    assert verdict(config, IMAGE, bundle) == (False, "the message digest is not SHA2_256")


def test_an_intoto_entry_whose_envelope_holds_another_payload_is_refused(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey
) -> None:
    """The logged hash is right but the logged envelope carries other bytes (sorting before
    and after the real payload): the entry does not log this payload."""
    key = ec.generate_private_key(ec.SECP256R1())
    payload = statement(IMAGE)
    bundle, signature = keyed_bundle(key, payload)
    for other in (b"\x00" + payload, b"\xff" + payload):
        body = json.loads(intoto_entry_body(key, payload, signature))
        twice = base64.b64encode(base64.b64encode(other)).decode()
        body["spec"]["content"]["envelope"]["payload"] = twice
        entry = intoto_logged(rekor, json.dumps(body, separators=(",", ":")).encode())
        bundle["verificationMaterial"]["tlogEntries"] = [entry]
        assert verdict(strict(tmp_path, key), IMAGE, bundle) == (
            False,
            "the Rekor entry logs another payload",
        )


@pytest.mark.parametrize("kind", ["cose", "alpine", "a", "dsse2", "hashedrekord"])
def test_an_entry_of_another_kind_shaped_like_dsse_is_refused(
    tmp_path: Path, rekor: ec.EllipticCurvePrivateKey, kind: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    payload = statement(IMAGE)
    bundle, signature = keyed_bundle(key, payload)
    body = json.loads(dsse_entry_body(key, payload, signature))
    body["kind"] = kind
    entry = promised_entry(rekor, json.dumps(body, separators=(",", ":")).encode())
    bundle["verificationMaterial"]["tlogEntries"] = [entry]
    assert verdict(strict(tmp_path, key), IMAGE, bundle) == (
        False,
        f"Rekor entry kind {kind!r} does not log this bundle's content",
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda envelope: envelope.update(signatures=5),
        lambda envelope: envelope.update(signatures=["not an object"]),
        lambda envelope: envelope.update(payloadType=None, signatures=[[]]),
    ],
    ids=["signatures-a-number", "signature-a-string", "signature-a-list"],
)
def test_a_keyed_bundle_with_fields_of_the_wrong_type_is_refused(change: Any) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bundle, _ = keyed_bundle(key, statement(IMAGE))
    change(bundle["dsseEnvelope"])
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    [finding] = verify_layer(config, IMAGE, json.dumps(bundle).encode())
    assert (finding.valid, finding.detail) == (False, "not a Sigstore bundle")


@pytest.mark.parametrize("public_key", ["a string", ["a", "list"], {}, {"hint": "another key"}])
def test_the_key_hint_is_advisory_whatever_its_shape(public_key: Any) -> None:
    """The hint only orders the trusted keys tried: a hint of another shape, none, or one naming
    another key neither breaks verification nor keeps the right key from being tried."""
    key = ec.generate_private_key(ec.SECP256R1())
    bundle, _ = keyed_bundle(key, statement(IMAGE))
    bundle["verificationMaterial"]["publicKey"] = public_key
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    [finding] = verify_layer(config, IMAGE, json.dumps(bundle).encode())
    assert (finding.valid, finding.signer) == (True, "release")


def test_a_sha512_digest_filed_as_a_sha256_subject_names_no_image() -> None:
    """A statement's subjects are read from their `sha256` digests only: a sha512 image's hex
    filed there (by a careless signer, or a tool confusing the two) proves nothing for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    image = "sha512:" + hashlib.sha512(b"an image").hexdigest()
    bundle, _ = keyed_bundle(key, statement("sha256:" + image[7:]))
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    assert verdict(config, image, bundle) == (
        False,
        f"for another image (sha256:{image[7:19]}…)",
    )


def test_a_keyless_message_signature_cannot_vouch_for_a_sha512_image() -> None:
    """A message signature signs a SHA-256 digest: a sha512 image is refused, saying why,
    before `sigstore` is asked to compare digests of different lengths."""
    config = trust(
        {
            "identities": {
                "tny": {
                    "issuer": GITHUB_LOGIN,
                    "subject": STAGING_USERS["tny"],
                    "trusted_root": "staging",
                }
            }
        }
    )
    content = (VECTORS / "bundle.txt.sigstore").read_bytes()
    assert verdict(config, digest_of("bundle.txt"), content) == (True, "tny")
    image = "sha512:" + hashlib.sha512(b"an image").hexdigest()
    assert verdict(config, image, content) == (
        False,
        "a Sigstore bundle that does not verify (cannot check a sha512 image digest)",
    )


def test_a_statement_naming_other_artifacts_by_other_digests_still_names_the_image() -> None:
    """in-toto subjects may name artifacts by any digest algorithm: a subject without a
    `sha256` digest, or one that is not even an object, is passed over, never a refusal (nor a
    crash) of the whole statement."""
    key = ec.generate_private_key(ec.SECP256R1())
    config = trust({"keys": {"release": {"pem": pem(key)}}})
    document = json.loads(statement(IMAGE))
    document["subject"][:0] = [
        {"name": "sbom.spdx.json", "digest": {"sha512": "ab" * 64}},
        {"name": "notes.txt", "digest": {}},
        "sha256:" + "cd" * 32,
    ]
    bundle, _ = keyed_bundle(key, json.dumps(document).encode())
    assert verdict(config, IMAGE, bundle) == (True, "release")
    # Without the image among them, the others are what the refusal names: nothing.
    del document["subject"][3]
    bundle, _ = keyed_bundle(key, json.dumps(document).encode())
    assert verdict(config, IMAGE, bundle) == (False, "for another image (nothing)")


def test_a_keyless_message_signature_failing_otherwise_is_not_for_another_image() -> None:
    """ "for another image" is kept for a digest that does not match: a message signature whose
    certificate chains to no trusted CA says the bundle does not verify, and why."""
    config = trust(
        {"identities": {"tny": {"issuer": GITHUB_LOGIN, "subject": STAGING_USERS["tny"]}}}
    )
    content = (VECTORS / "bundle.txt.sigstore").read_bytes()
    valid, detail = verdict(config, digest_of("bundle.txt"), content)
    assert not valid
    # The rest of the reason is `sigstore`'s own words about the chain.
    assert detail.startswith(
        "a Sigstore bundle that does not verify (failed to build timestamp certificate chain"
    ), detail


def test_a_keyless_certificate_whose_names_cannot_be_read_is_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    """A leaf the trusted Fulcio signed, whose subject-alternative name is an IP address of 5
    bytes: the `sigstore` verifier builds the chain first, then `cryptography` reads the name
    and raises a bare `ValueError` out of `sigstore` (it catches only its own types and the
    name types it does not support). The bundle is refused with that reason, not a traceback."""
    from cryptography.hazmat.primitives import serialization

    from tests.security.test_keyless_identity import (
        Fulcio,
        _der,
        _san_leaf,
        trust_identity,
        write_trusted_root,
    )
    from tests.signing import spki

    fulcio, rekor = Fulcio(), ec.generate_private_key(ec.SECP256R1())
    write_trusted_root(tmp_path, fulcio, rekor)
    signer = ec.generate_private_key(ec.SECP256R1())
    leaf = _san_leaf(fulcio, signer, _der(0x30, _der(0x87, b"\x0a\x00\x00\x01\x05")))
    image = bytes.fromhex(IMAGE.removeprefix("sha256:"))
    signature = signer.sign(image, ec.ECDSA(Prehashed(hashes.SHA256())))

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    body = {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": image.hex()}},
            "signature": {
                "content": b64(signature),
                "publicKey": {"content": b64(leaf.public_bytes(serialization.Encoding.PEM))},
            },
        },
    }
    # Logged "now": sigstore takes the entry's time for the chain before it checks the entry
    # (its promise and proof are never reached: the leaf is refused first).
    logged = str(int(leaf.not_valid_before_utc.timestamp()) + 60)
    bundle = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {
            "certificate": {"rawBytes": b64(leaf.public_bytes(serialization.Encoding.DER))},
            "tlogEntries": [
                {
                    "logIndex": "1",
                    "logId": {"keyId": b64(hashlib.sha256(spki(rekor)).digest())},
                    "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
                    "integratedTime": logged,
                    "inclusionPromise": {"signedEntryTimestamp": b64(b"\x30\x00")},
                    "canonicalizedBody": b64(json.dumps(body).encode()),
                    "inclusionProof": {
                        "logIndex": "1",
                        "rootHash": b64(bytes(32)),
                        "treeSize": "2",
                        "hashes": [b64(bytes(32))],
                        "checkpoint": {"envelope": "rekor.acme.example - 1\n2\nAA==\n\n"},
                    },
                }
            ],
        },
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": b64(image)},
            "signature": b64(signature),
        },
    }
    trust_config = trust_identity(tmp_path, subject="release@acme.example")
    [finding] = verify_layer(trust_config, IMAGE, json.dumps(bundle).encode())
    assert (finding.valid, finding.detail) == (
        False,
        "a Sigstore bundle that does not verify "
        "(b'\\n\\x00' does not appear to be an IPv4 or IPv6 address)",
    )
