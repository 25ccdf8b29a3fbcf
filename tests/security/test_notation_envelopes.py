"""Notation envelopes an attacker with push rights could craft: every header, time and target
check refuses with its reason, malformed envelopes are refused (never an exception), and a
proof ends when the certificate or the signature does. Envelopes are made here with
`cryptography` (JWS and COSE_Sign1), verified through `verify_layer`."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from policies.signatures.notation import COSE, JWS, PAYLOAD_TYPE, verify_layer
from tests.policies.test_signatures_notation import (
    NOW,
    VECTORS,
    _certificate,
    b64url,
    pem_of,
    trust,
)

IMAGE = "sha256:" + "8" * 64
DER = serialization.Encoding.DER


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("Acme Root", root_key, "Acme Root", root_key, ca=True, days=3650)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate("release", key, "Acme Root", root_key, ca=False)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_leaf = _certificate("release-rsa", rsa_key, "Acme Root", root_key, ca=False)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _certificate("Other Root", other_key, "Other Root", other_key, ca=True, days=3650)
    # A self-signed signing certificate trusted as is (as Notation's test certificates are).
    self_key = ec.generate_private_key(ec.SECP256R1())
    self_signed = _certificate("signer", self_key, "signer", self_key, ca=False)
    return {
        "root": root,
        "key": key,
        "leaf": leaf,
        "rsa_key": rsa_key,
        "rsa_leaf": rsa_leaf,
        "other": other,
        "self_key": self_key,
        "self_signed": self_signed,
    }


def corp(pki: dict[str, Any]) -> Any:
    return trust({"certificates": {"corp-ca": {"pem": pem_of(pki["root"])}}})


def sign(key: Any, data: bytes, scheme: str) -> bytes:
    """ES256 as JOSE/COSE want it (r || s), or PS256."""
    if scheme == "pss":
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return key.sign(data, pss, hashes.SHA256())
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def payload_for(digest: str) -> bytes:
    target = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest}
    return json.dumps({"targetArtifact": {**target, "size": 1}}).encode()


def jws(
    key: Any,
    chain: list[x509.Certificate],
    payload: bytes,
    scheme: str = "ecdsa",
    **headers: Any,
) -> bytes:
    protected = {
        "alg": "ES256",
        "crit": ["io.cncf.notary.signingScheme"],
        "cty": PAYLOAD_TYPE,
        "io.cncf.notary.signingScheme": "notary.x509",
        "io.cncf.notary.signingTime": NOW.isoformat(),
        **headers,
    }
    signing_input = f"{b64url(json.dumps(protected).encode())}.{b64url(payload)}"
    protected_b64, payload_b64 = signing_input.split(".")
    return json.dumps(
        {
            "protected": protected_b64,
            "payload": payload_b64,
            "header": {"x5c": [base64.b64encode(c.public_bytes(DER)).decode() for c in chain]},
            "signature": b64url(sign(key, signing_input.encode(), scheme)),
        }
    ).encode()


def cose(key: Any, chain: list[x509.Certificate], payload: bytes, tag: int = 18, **more: Any):
    header = {
        1: -7,
        2: ["io.cncf.notary.signingScheme"],
        3: PAYLOAD_TYPE,
        "io.cncf.notary.signingScheme": "notary.x509",
        "io.cncf.notary.signingTime": NOW,
        **{int(k[1:]) if k.startswith("_") else k: v for k, v in more.items()},
    }
    protected = cbor2.dumps(header)
    signature = sign(key, cbor2.dumps(["Signature1", protected, b"", payload]), "ecdsa")
    unprotected = {33: [c.public_bytes(DER) for c in chain]}
    return cbor2.dumps(cbor2.CBORTag(tag, [protected, unprotected, payload, signature]))


def refusal(config: Any, media_type: str, content: bytes, **kwargs: Any) -> str:
    [finding] = verify_layer(config, IMAGE, media_type, content, **kwargs)
    assert not finding.valid, finding
    return finding.detail


def test_a_valid_envelope_verifies(pki: dict[str, Any]) -> None:
    chain = [pki["leaf"], pki["root"]]
    for media_type, content in (
        (JWS, jws(pki["key"], chain, payload_for(IMAGE))),
        (COSE, cose(pki["key"], chain, payload_for(IMAGE))),
    ):
        [finding] = verify_layer(corp(pki), IMAGE, media_type, content)
        assert finding.valid and finding.signer == "corp-ca"


@pytest.mark.parametrize("signed", ["sha256:" + "0" * 64, "sha256:" + "f" * 64])
def test_a_signature_of_another_image_is_refused_whichever_way_it_sorts(
    pki: dict[str, Any], signed: str
) -> None:
    content = jws(pki["key"], [pki["leaf"], pki["root"]], payload_for(signed))
    assert refusal(corp(pki), JWS, content) == f"for another image ({signed[:19]}…)"


@pytest.mark.parametrize("cty", ["application/json", "application/zzz+json"])
def test_a_payload_of_another_content_type_is_refused(pki: dict[str, Any], cty: str) -> None:
    content = jws(pki["key"], [pki["leaf"], pki["root"]], payload_for(IMAGE), cty=cty)
    assert refusal(corp(pki), JWS, content) == f"payload content type {cty!r} is not Notation's"


def test_an_algorithm_that_does_not_fit_the_key_is_refused(pki: dict[str, Any]) -> None:
    """PS256 named over an EC key (verified as ECDSA), ES256 over an RSA key (as PSS): the
    envelope must say what it is."""
    ec_chain = [pki["leaf"], pki["root"]]
    content = jws(pki["key"], ec_chain, payload_for(IMAGE), alg="PS256")
    assert refusal(corp(pki), JWS, content) == "PS256 does not fit the certificate's key"
    rsa_chain = [pki["rsa_leaf"], pki["root"]]
    content = jws(pki["rsa_key"], rsa_chain, payload_for(IMAGE), scheme="pss", alg="ES256")
    assert refusal(corp(pki), JWS, content) == "ES256 does not fit the certificate's key"
    # The same RSA envelope naming its own algorithm verifies.
    content = jws(pki["rsa_key"], rsa_chain, payload_for(IMAGE), scheme="pss", alg="PS256")
    assert [f.valid for f in verify_layer(corp(pki), IMAGE, JWS, content)] == [True]


@pytest.mark.parametrize("tag", [17, 19, 98])
def test_a_cose_message_of_another_tag_is_refused(pki: dict[str, Any], tag: int) -> None:
    content = cose(pki["key"], [pki["leaf"], pki["root"]], payload_for(IMAGE), tag=tag)
    assert refusal(corp(pki), COSE, content) == f"CBOR tag {tag} is not COSE_Sign1"


def test_a_cose_plugin_header_cannot_be_verified(pki: dict[str, Any]) -> None:
    crit = ["io.cncf.notary.signingScheme", "io.cncf.notary.verificationPlugin"]
    content = cose(pki["key"], [pki["leaf"], pki["root"]], payload_for(IMAGE), _2=crit)
    assert refusal(corp(pki), COSE, content) == (
        "needs headers this verifier does not implement (io.cncf.notary.verificationPlugin)"
    )


def test_a_signing_time_after_the_certificate_is_refused(pki: dict[str, Any]) -> None:
    late = pki["leaf"].not_valid_after_utc + datetime.timedelta(seconds=1)
    content = jws(
        pki["key"],
        [pki["leaf"], pki["root"]],
        payload_for(IMAGE),
        **{"io.cncf.notary.signingTime": late.isoformat()},
    )
    assert "outside the certificate's validity" in refusal(corp(pki), JWS, content)


@pytest.mark.parametrize("edge", ["not_valid_before_utc", "not_valid_after_utc"])
def test_a_signing_time_on_the_certificate_validity_edge_verifies(
    pki: dict[str, Any], edge: str
) -> None:
    at = getattr(pki["leaf"], edge)
    content = jws(
        pki["key"],
        [pki["leaf"], pki["root"]],
        payload_for(IMAGE),
        **{"io.cncf.notary.signingTime": at.isoformat()},
    )
    assert [f.valid for f in verify_layer(corp(pki), IMAGE, JWS, content)] == [True]


def test_an_expiry_is_honoured_in_any_offset_and_a_naive_time_is_utc(
    pki: dict[str, Any],
) -> None:
    chain = [pki["leaf"], pki["root"]]
    # An hour ago, written in +05:00: the clock reading is four hours ahead of now.
    past = (NOW - datetime.timedelta(hours=1)).astimezone(
        datetime.timezone(datetime.timedelta(hours=5))
    )
    content = jws(
        pki["key"], chain, payload_for(IMAGE), **{"io.cncf.notary.expiry": past.isoformat()}
    )
    assert refusal(corp(pki), JWS, content).startswith("the signature expired at")
    # Naive times are UTC; an expiry in an hour still proves, until then.
    soon = NOW + datetime.timedelta(hours=1)
    content = jws(
        pki["key"],
        chain,
        payload_for(IMAGE),
        **{
            "io.cncf.notary.signingTime": NOW.replace(tzinfo=None).isoformat(),
            "io.cncf.notary.expiry": soon.isoformat(),
        },
    )
    [finding] = verify_layer(corp(pki), IMAGE, JWS, content)
    assert finding.valid and finding.valid_until == soon.timestamp()
    # Valid until just before the expiry instant, expired at it (the Notary Project: "expired
    # when the current time is greater than or equal to expiry time").
    before = soon - datetime.timedelta(microseconds=1)
    [just_before] = verify_layer(corp(pki), IMAGE, JWS, content, now=before)
    assert just_before.valid
    assert refusal(corp(pki), JWS, content, now=soon).startswith("the signature expired at")


def test_a_proof_ends_when_the_chain_does(pki: dict[str, Any]) -> None:
    content = jws(pki["key"], [pki["leaf"], pki["root"]], payload_for(IMAGE))
    [finding] = verify_layer(corp(pki), IMAGE, JWS, content)
    assert finding.valid
    # The chain ends when its `notAfter` second does (X.509 includes it).
    assert finding.valid_until == pki["leaf"].not_valid_after_utc.timestamp() + 1


def test_a_trusted_self_signed_signer_is_valid_only_within_its_validity(
    pki: dict[str, Any],
) -> None:
    signer = pki["self_signed"]
    config = trust({"certificates": {"signer": {"pem": pem_of(signer)}}})
    content = jws(pki["self_key"], [signer], payload_for(IMAGE))
    for now in (signer.not_valid_before_utc, NOW, signer.not_valid_after_utc):
        assert [f.valid for f in verify_layer(config, IMAGE, JWS, content, now=now)] == [True]
    second = datetime.timedelta(seconds=1)
    for now in (signer.not_valid_before_utc - second, signer.not_valid_after_utc + second):
        detail = refusal(config, JWS, content, now=now)
        assert detail == "by an untrusted certificate (O=Acme,CN=signer): " + (
            "the signing certificate is not valid now"
        )


def test_a_later_certificates_entry_is_tried_after_one_that_does_not_fit(
    pki: dict[str, Any],
) -> None:
    content = jws(pki["key"], [pki["leaf"], pki["root"]], payload_for(IMAGE))
    for first in (
        {"pem": pem_of(pki["other"])},  # another CA: the chain does not lead to it
        {"pem": pem_of(pki["root"]), "subject": "CN=someone else, O=Acme"},
    ):
        config = trust({"certificates": {"first": first, "corp-ca": {"pem": pem_of(pki["root"])}}})
        assert [(f.valid, f.signer) for f in verify_layer(config, IMAGE, JWS, content)] == [
            (True, "corp-ca")
        ]


def _raw_jws(document: Any) -> bytes:
    return json.dumps(document).encode()


def _vector_jws() -> dict[str, Any]:
    return json.loads((VECTORS / "jws_signature.sig").read_bytes())


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        _raw_jws({"payload": "e30", "signature": "AA", "header": {"x5c": []}}),
        _raw_jws(["protected", "payload"]),
        _raw_jws({**_vector_jws(), "header": {"x5c": 5}}),
        _raw_jws({**_vector_jws(), "header": {"x5c": ["!!not base64!!"]}}),
    ],
    ids=["not-json", "no-protected", "a-list", "x5c-not-a-list", "x5c-not-base64"],
)
def test_a_malformed_jws_is_refused_with_a_reason(pki: dict[str, Any], content: bytes) -> None:
    assert refusal(corp(pki), JWS, content) == "not a Notation JWS envelope"


def test_a_chain_entry_that_is_not_a_der_certificate_is_named(pki: dict[str, Any]) -> None:
    """Bytes that are not a certificate (JWS, COSE) and a COSE chain entry that is text, not
    bytes: "the certificate chain is not DER certificates", not the envelope's generic reason."""
    not_der = base64.b64encode(b"not a certificate").decode()
    content = _raw_jws({**_vector_jws(), "header": {"x5c": [not_der]}})
    assert refusal(corp(pki), JWS, content) == "the certificate chain is not DER certificates"
    for entry in (b"not a certificate", "text"):
        protected, _, payload, signature = cbor2.loads(
            cose(pki["key"], [pki["leaf"]], payload_for(IMAGE))
        ).value
        parts = [protected, {33: [entry]}, payload, signature]
        content = cbor2.dumps(cbor2.CBORTag(18, parts))
        assert refusal(corp(pki), COSE, content) == (
            "the certificate chain is not DER certificates"
        ), entry


def test_a_jws_field_that_is_not_base64url_is_named(pki: dict[str, Any]) -> None:
    document = _vector_jws()
    for field in ("protected", "signature"):
        content = _raw_jws({**document, field: "été"})
        assert refusal(corp(pki), JWS, content) == "the JWS is not base64url"


def test_a_signing_time_that_is_not_a_time_is_refused(pki: dict[str, Any]) -> None:
    content = jws(
        pki["key"],
        [pki["leaf"], pki["root"]],
        payload_for(IMAGE),
        **{"io.cncf.notary.signingTime": "yesterday"},
    )
    assert refusal(corp(pki), JWS, content) == "not a time: 'yesterday'"


@pytest.mark.parametrize(
    "message",
    [
        cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"x"])),  # three parts: ValueError
        cbor2.dumps(cbor2.CBORTag(18, 5)),  # not a list: TypeError
        cbor2.dumps(cbor2.CBORTag(18, [b"", [1], b"x", b"s"])),  # unprotected a list
    ],
    ids=["three-parts", "not-a-list", "unprotected-a-list"],
)
def test_a_malformed_cose_is_refused_with_a_reason(pki: dict[str, Any], message: bytes) -> None:
    assert refusal(corp(pki), COSE, message) == "not a Notation COSE envelope"


@pytest.mark.parametrize(
    "payload", [b"not json", b"{}", b"[1, 2]"], ids=["not-json", "no-target", "a-list"]
)
def test_a_payload_without_a_target_is_refused(pki: dict[str, Any], payload: bytes) -> None:
    content = jws(pki["key"], [pki["leaf"], pki["root"]], payload)
    assert refusal(corp(pki), JWS, content) == "the payload has no targetArtifact descriptor"


def verdicts(
    config: Any, content: bytes, moments: list[datetime.datetime]
) -> list[tuple[bool, bool]]:
    """At each moment: whether the verifier accepts the signature then, and whether the proof
    it recorded at its first moment still counts for the `signature` rule then."""
    [recorded] = verify_layer(config, IMAGE, JWS, content, now=moments[0])
    accepted = [
        any(f.valid for f in verify_layer(config, IMAGE, JWS, content, now=m)) for m in moments
    ]
    counted = [recorded.counts_at(m.timestamp()) for m in moments]
    return list(zip(accepted, counted, strict=True))


SECOND = datetime.timedelta(seconds=1)


def test_the_verifier_and_the_rule_end_a_signature_at_its_expiry_instant(
    pki: dict[str, Any],
) -> None:
    """Expired from the expiry instant on, for the verifier and the rule alike."""
    expiry = (NOW + datetime.timedelta(hours=1)).replace(microsecond=0)
    content = jws(
        pki["key"],
        [pki["leaf"], pki["root"]],
        payload_for(IMAGE),
        **{"io.cncf.notary.expiry": expiry.isoformat()},
    )
    moments = [expiry - SECOND, expiry, expiry + SECOND]
    assert verdicts(corp(pki), content, moments) == [(True, True), (False, False), (False, False)]


@pytest.mark.parametrize("signer", ["chain", "self_signed"])
def test_the_verifier_and_the_rule_end_a_certificate_after_its_not_after_second(
    pki: dict[str, Any], signer: str
) -> None:
    """A certificate is valid through its `notAfter` second (RFC 5280: inclusive, read in whole
    seconds as the chain verifier reads it) and not one second later: the verifier accepts
    and the rule counts the proof at exactly the same moments."""
    if signer == "chain":
        config, leaf = corp(pki), pki["leaf"]
        content = jws(pki["key"], [leaf, pki["root"]], payload_for(IMAGE))
    else:
        leaf = pki["self_signed"]
        config = trust({"certificates": {"signer": {"pem": pem_of(leaf)}}})
        content = jws(pki["self_key"], [leaf], payload_for(IMAGE))
    end = leaf.not_valid_after_utc
    moments = [end - SECOND, end, end + SECOND / 2, end + SECOND]
    assert verdicts(config, content, moments) == [
        (True, True),
        (True, True),
        (True, True),
        (False, False),
    ]
