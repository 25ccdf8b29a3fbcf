"""What Trustyard adds to the `sigstore` package's verifier refuses precisely: an `intoto` 0.0.2
log entry logging another payload, payload type or signature; a trusted root with an authority
or log key that does not say from when it is trusted; a timestamp before its authority's trust
begins. Malformed bundle bytes are handed on unchanged (the verifier then names what is wrong).

The entry checks run after the DSSE signature and the entry's inclusion are verified, so an edited
entry never reaches them through a bundle (its inclusion fails first): they are called here with
the sigstore-js bundle's own envelope and an edited copy of its entry body."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sigstore.errors import VerificationError
from sigstore.models import Bundle

from policies.signatures.bundles import verify_layer
from policies.signatures.sigstore_verifier import (
    _check_intoto_body,
    check_trusted_root,
    proto3_defaults,
)
from tests.policies.test_signatures_sigstore_js import (
    SUBJECT,
    VECTORS,
    _gen_time,
    edited,
    trust,
)

ROOT = json.loads((VECTORS / "trusted_root.json").read_text())


def with_entry_body(change: Callable[[dict[str, Any]], None]) -> Bundle:
    """The sigstore-js bundle with its log entry body changed by `change`."""

    def edit(document: dict[str, Any]) -> None:
        entry = document["verificationMaterial"]["tlogEntries"][0]
        body = json.loads(base64.b64decode(entry["canonicalizedBody"]))
        change(body)
        entry["canonicalizedBody"] = base64.b64encode(json.dumps(body).encode()).decode()

    return Bundle.from_json(proto3_defaults(edited(edit)))


def with_body(change: Callable[[dict[str, Any]], None]) -> Bundle:
    """The sigstore-js bundle with its log entry's `spec.content` changed by `change`."""
    return with_entry_body(lambda body: change(body["spec"]["content"]))


def drop_promise(document: dict[str, Any]) -> None:
    """No signed entry timestamp: the RFC 3161 timestamp is the bundle's only verified time."""
    del document["verificationMaterial"]["tlogEntries"][0]["inclusionPromise"]


def check(bundle: Bundle) -> None:
    """The entry body check against the bundle's own envelope."""
    envelope = bundle._dsse_envelope
    assert envelope is not None
    _check_intoto_body(bundle, envelope._inner)


def refusal(bundle: Bundle) -> str:
    """Why the entry body check refuses the bundle."""
    with pytest.raises(VerificationError) as refused:
        check(bundle)
    return str(refused.value)


def twice_encoded(raw: bytes) -> str:
    """How an `intoto` 0.0.2 entry logs envelope bytes: base64 of their base64 text."""
    return base64.b64encode(base64.b64encode(raw)).decode()


def test_the_entry_of_the_bundle_logs_its_envelope() -> None:
    check(with_body(lambda content: None))


def test_an_entry_without_the_payload_itself_is_bound_by_its_hash() -> None:
    """The logged payload is optional: the payload hash binds the entry to the envelope."""

    def drop_payload(content: dict[str, Any]) -> None:
        del content["envelope"]["payload"]

    check(with_body(drop_payload))


@pytest.mark.parametrize("other", [b"", b"\xff" * 64], ids=["sorting-first", "sorting-last"])
def test_an_entry_logging_another_payload_is_refused(other: bytes) -> None:
    """The payload hash still matches the envelope; the logged payload is another one, whichever
    way it sorts against the envelope's."""

    def other_payload(content: dict[str, Any]) -> None:
        content["envelope"]["payload"] = twice_encoded(other)

    assert refusal(with_body(other_payload)) == "the log entry payload does not match the bundle"


@pytest.mark.parametrize("payload_type", ["application/a", "text/plain"])
def test_an_entry_logging_another_payload_type_is_refused(payload_type: str) -> None:
    """Another type sorting before and after the envelope's `application/vnd.in-toto+json`."""

    def other_type(content: dict[str, Any]) -> None:
        content["envelope"]["payloadType"] = payload_type

    assert refusal(with_body(other_type)) == "the log entry payload type does not match the bundle"


def test_a_logged_signature_that_is_not_base64_text_is_not_the_bundle_s() -> None:
    """A signature field with a character base64 cannot hold is simply not this signature."""

    def not_ascii(content: dict[str, Any]) -> None:
        content["envelope"]["signatures"][0]["sig"] = "é" * 8

    assert refusal(with_body(not_ascii)) == "the log entry signatures do not match the bundle"


def test_trusted_root_without_an_object_is_unusable() -> None:
    assert check_trusted_root([ROOT]) == "not a JSON object"
    assert check_trusted_root(ROOT) is None


@pytest.mark.parametrize(
    ("section", "missing"),
    [
        ("tlogs", "tlogs[{i}].publicKey.validFor.start is missing"),
        ("ctlogs", "ctlogs[{i}].publicKey.validFor.start is missing"),
        ("certificateAuthorities", "certificateAuthorities[{i}].validFor.start is missing"),
        ("timestampAuthorities", "timestampAuthorities[{i}].validFor.start is missing"),
    ],
)
def test_every_key_and_authority_must_say_from_when_it_is_trusted(
    section: str, missing: str
) -> None:
    """Each section is read, and every entry of it (here the second, after a good one)."""
    root = json.loads(json.dumps(ROOT))
    good = root[section][0]
    unbounded = json.loads(json.dumps(good))
    validity = unbounded.get("publicKey", unbounded)
    del validity["validFor"]["start"]
    root[section] = [good, unbounded]
    assert check_trusted_root(root) == missing.format(i=1)


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b'"a string"',  # TypeError: a string indexed by a key
        b"{}",  # KeyError: no verificationMaterial
        b'{"verificationMaterial": ["tlogEntries"]}',  # AttributeError: a list, no setdefault
    ],
)
def test_bytes_that_are_not_a_bundle_are_handed_on_unchanged(content: bytes) -> None:
    assert proto3_defaults(content) == content


def test_the_proto3_defaults_are_written_back() -> None:
    document = {"verificationMaterial": {"tlogEntries": [{"inclusionProof": {"rootHash": "x"}}]}}
    written = json.loads(proto3_defaults(json.dumps(document).encode()))
    assert written["verificationMaterial"]["tlogEntries"][0]["inclusionProof"] == {
        "rootHash": "x",
        "logIndex": "0",
        "hashes": [],
    }
    assert json.loads(proto3_defaults(b'{"verificationMaterial": {}}')) == {
        "verificationMaterial": {"tlogEntries": []}
    }


@pytest.mark.parametrize(("start_offset", "valid"), [(-1, True), (0, True), (1, False)])
def test_a_timestamp_authority_counts_from_its_validity_start_included(
    tmp_path: Path, start_offset: int, valid: bool
) -> None:
    """`validFor` is closed at its start too: a timestamp at the very start counts, one a second
    before it does not (the SET removed: the timestamp is the only verified time)."""
    root = json.loads(json.dumps(ROOT))
    start = _gen_time() + timedelta(seconds=start_offset)
    root["timestampAuthorities"][0]["validFor"]["start"] = start.isoformat().replace("+00:00", "Z")
    path = tmp_path / "root.json"
    path.write_text(json.dumps(root))

    [finding] = verify_layer(trust(path), SUBJECT, edited(drop_promise))
    assert finding.valid is valid, finding.detail
    if not valid:
        assert finding.detail == (
            "a Sigstore bundle that does not verify (not enough sources of verified time)"
        )


def no_envelope_v001(body: dict[str, Any]) -> None:
    """An `intoto` 0.0.1 body: a public key and hashes, no envelope."""
    content = body["spec"]["content"]
    body["apiVersion"] = "0.0.1"
    body["spec"] = {
        "content": {"hash": content["hash"], "payloadHash": content["payloadHash"]},
        "publicKey": base64.b64encode(b"a key").decode(),
    }


def test_an_entry_without_an_envelope_or_a_payload_hash_is_refused_so() -> None:
    assert (
        refusal(with_entry_body(no_envelope_v001))
        == "the intoto log entry has no envelope or payload hash"
    )

    def no_payload_hash(content: dict[str, Any]) -> None:
        del content["payloadHash"]

    assert (
        refusal(with_body(no_payload_hash))
        == "the intoto log entry has no envelope or payload hash"
    )


def test_an_entry_whose_envelope_is_not_an_envelope_is_invalid() -> None:
    """An `intoto` 0.0.1 body may carry its envelope as text: no payload or signatures to read
    there, an invalid entry rather than a crash."""

    def envelope_as_text(body: dict[str, Any]) -> None:
        no_envelope_v001(body)
        body["spec"]["content"]["envelope"] = "an envelope"

    assert refusal(with_entry_body(envelope_as_text)).startswith("invalid intoto log entry: ")


def claimed_kind(kind: str, version: str, promise: bool = True) -> Callable[[Any], None]:
    """The bundle's log entry claiming another kind (the entry body is still the intoto one)."""

    def edit(document: dict[str, Any]) -> None:
        entry = document["verificationMaterial"]["tlogEntries"][0]
        entry["kindVersion"] = {"kind": kind, "version": version}
        if not promise:
            del entry["inclusionPromise"]

    return edit


@pytest.mark.parametrize(
    ("kind", "version"),
    [("intoto", "0.0.1"), ("dsse", "0.0.2"), ("hashedrekord", "0.0.2"), ("zzz", "0.0.1")],
)
def test_only_the_kinds_it_vouches_for_have_a_verified_integrated_time(
    kind: str, version: str
) -> None:
    """An entry claiming a kind other than dsse/hashedrekord 0.0.1 or intoto 0.0.2 (sorting
    before or after intoto) gets no verified time from its signed entry timestamp."""
    [finding] = verify_layer(trust(), SUBJECT, edited(claimed_kind(kind, version)))
    assert not finding.valid
    assert finding.detail == (
        "a Sigstore bundle that does not verify "
        "(Integrated time only supported for dsse/hashedrekord 0.0.1 types)"
    )


@pytest.mark.parametrize("kind", ["rekord", "zzz"])
def test_an_entry_claiming_a_kind_after_intoto_is_not_read_as_intoto(kind: str) -> None:
    """With the timestamp as its only time (no SET), an entry claiming another kind is refused
    as that kind, though its body is this envelope's intoto entry."""
    [finding] = verify_layer(trust(), SUBJECT, edited(claimed_kind(kind, "0.0.1", promise=False)))
    assert not finding.valid
    assert finding.detail == (
        f"a Sigstore bundle that does not verify (Unsupported DSSE log entry type: {kind}/0.0.1)"
    )


def test_an_authority_without_a_chain_does_not_stop_the_search(tmp_path: Path) -> None:
    """A timestamp authority listing only one certificate (no signer and root) is passed over;
    the next authority still verifies the timestamp."""
    root = json.loads(json.dumps(ROOT))
    [authority] = root["timestampAuthorities"]
    lone = json.loads(json.dumps(authority))
    lone["certChain"]["certificates"] = lone["certChain"]["certificates"][-1:]
    root["timestampAuthorities"] = [lone, authority]
    path = tmp_path / "root.json"
    path.write_text(json.dumps(root))

    [finding] = verify_layer(trust(path), SUBJECT, edited(drop_promise))
    assert finding.valid, finding.detail


@pytest.mark.parametrize("logged", ["00" * 32, "ff" * 32], ids=["sorting-first", "sorting-last"])
def test_an_entry_logging_another_payload_hash_is_refused(logged: str) -> None:
    def other_hash(content: dict[str, Any]) -> None:
        content["payloadHash"]["value"] = logged

    assert refusal(with_body(other_hash)) == "the log entry payload hash does not match the bundle"


@pytest.mark.parametrize("raw", [b"\x00" * 64, b"\xff" * 64], ids=["sorting-first", "sorting-last"])
def test_an_entry_logging_another_signature_is_refused(raw: bytes) -> None:
    """Well encoded, but not the envelope's signature, whichever way it sorts against it."""

    def other_signature(content: dict[str, Any]) -> None:
        content["envelope"]["signatures"][0]["sig"] = twice_encoded(raw)

    assert refusal(with_body(other_signature)) == (
        "the log entry signatures do not match the bundle"
    )


def test_logged_fields_must_be_strict_base64() -> None:
    """The logged payload with characters base64 does not hold around it is not this payload
    (a lenient reader would drop them and match)."""

    def junk(content: dict[str, Any]) -> None:
        content["envelope"]["payload"] = "!" + content["envelope"]["payload"]

    assert refusal(with_body(junk)).startswith("invalid intoto log entry: ")


def test_a_logged_certificate_that_is_not_a_certificate_is_invalid() -> None:
    def not_pem(content: dict[str, Any]) -> None:
        content["envelope"]["signatures"][0]["publicKey"] = base64.b64encode(b"no").decode()

    assert refusal(with_body(not_pem)).startswith("invalid intoto log entry: Unable to load PEM")


def test_the_signed_entry_timestamp_alone_is_a_verified_time() -> None:
    """Without an RFC 3161 timestamp the entry's integrated time, bound by its signed entry
    timestamp, is the verified time of an `intoto` 0.0.2 entry."""

    def no_timestamp(document: dict[str, Any]) -> None:
        del document["verificationMaterial"]["timestampVerificationData"]

    [finding] = verify_layer(trust(), SUBJECT, edited(no_timestamp))
    assert finding.valid, finding.detail


def test_an_authority_that_did_not_sign_the_timestamp_does_not_stop_the_search(
    tmp_path: Path,
) -> None:
    """Another authority's chain (the conformance suite's) listed first does not verify the
    timestamp; the next authority's does."""
    other = VECTORS.parent / "sigstore-conformance" / "bundle-verify"
    custom = json.loads((other / "intoto-with-custom-trust-root" / "trusted_root.json").read_text())
    root = json.loads(json.dumps(ROOT))
    root["timestampAuthorities"] = custom["timestampAuthorities"] + root["timestampAuthorities"]
    path = tmp_path / "root.json"
    path.write_text(json.dumps(root))
    [finding] = verify_layer(trust(path), SUBJECT, edited(drop_promise))
    assert finding.valid, finding.detail
    # Alone, that authority verifies nothing.
    root["timestampAuthorities"] = custom["timestampAuthorities"]
    path.write_text(json.dumps(root))
    [finding] = verify_layer(trust(path), SUBJECT, edited(drop_promise))
    assert finding.detail == (
        "a Sigstore bundle that does not verify (not enough sources of verified time)"
    )
