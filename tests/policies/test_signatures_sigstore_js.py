"""A bundle sigstore-js writes (`sigstore attest`: a DSSE in-toto statement, a Rekor `intoto`
0.0.2 entry in proto3 JSON, an RFC 3161 timestamp) verifies, and stops verifying when its
trusted root, identity, statement subject, timestamp or log entry does not fit."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rfc3161_client import decode_timestamp_response

from policies.signatures.bundles import verify_layer
from policies.signatures.trust import TrustConfig, parse_trust

VECTORS = Path(__file__).parent / "vectors" / "sigstore-js"
BUNDLE = (VECTORS / "attest-intoto.sigstore.json").read_bytes()
SUBJECT = "sha256:" + "a" * 64
ISSUER = "https://ci.example"
SUBJECT_URI = "https://ci.example/acme/app/release"


def trust(root: Path = VECTORS / "trusted_root.json", subject: str = SUBJECT_URI) -> TrustConfig:
    config, problems = parse_trust(
        {"identities": {"ci": {"issuer": ISSUER, "subject": subject, "trusted_root": str(root)}}}
    )
    assert not problems
    return config


def edited(change: Any) -> bytes:
    document = json.loads(BUNDLE)
    change(document)
    return json.dumps(document).encode()


def test_the_sigstore_js_attestation_verifies_with_its_predicate_type() -> None:
    [finding] = verify_layer(trust(), SUBJECT, BUNDLE)
    assert finding.valid and finding.signer == "ci"
    assert finding.predicate_type == "https://slsa.dev/provenance/v1"
    assert finding.detail == f"{SUBJECT_URI} from {ISSUER}"


def test_another_identity_or_image_does_not_count() -> None:
    [finding] = verify_layer(trust(subject="https://ci.example/other"), SUBJECT, BUNDLE)
    assert not finding.valid
    assert finding.detail == f"by an unknown identity ({SUBJECT_URI} from {ISSUER})"
    [finding] = verify_layer(trust(), "sha256:" + "b" * 64, BUNDLE)
    assert finding.detail == "for another image (sha256:aaaaaaaaaaaa…)"


def test_another_trusted_root_does_not_count(tmp_path: Path) -> None:
    root = json.loads((VECTORS / "trusted_root.json").read_text())
    # The conformance suite's custom root: same shape, other keys.
    other = Path(__file__).parent / "vectors" / "sigstore-conformance" / "bundle-verify"
    root["certificateAuthorities"] = json.loads(
        (other / "intoto-with-custom-trust-root" / "trusted_root.json").read_text()
    )["certificateAuthorities"]
    path = tmp_path / "root.json"
    path.write_text(json.dumps(root))
    [finding] = verify_layer(trust(path), SUBJECT, BUNDLE)
    assert not finding.valid
    assert finding.detail.startswith("a Sigstore bundle that does not verify (")


def test_a_root_without_validity_start_is_refused(tmp_path: Path) -> None:
    root = json.loads((VECTORS / "trusted_root.json").read_text())
    del root["tlogs"][0]["publicKey"]["validFor"]
    path = tmp_path / "root.json"
    path.write_text(json.dumps(root))
    [finding] = verify_layer(trust(path), SUBJECT, BUNDLE)
    assert finding.detail == (
        f"a Sigstore bundle that does not verify (the trusted root {path} is malformed: "
        "tlogs[0].publicKey.validFor.start is missing)"
    )


def test_a_timestamp_from_an_untrusted_authority_is_refused(tmp_path: Path) -> None:
    root = json.loads((VECTORS / "trusted_root.json").read_text())
    root["timestampAuthorities"] = []
    path = tmp_path / "root.json"
    path.write_text(json.dumps(root))
    [finding] = verify_layer(trust(path), SUBJECT, BUNDLE)
    assert finding.detail == (
        "a Sigstore bundle that does not verify (the bundle has a signed timestamp but the "
        "trusted root no timestamp authority)"
    )


def test_a_timestamp_authority_whose_trust_ended_before_the_timestamp_is_refused(
    tmp_path: Path,
) -> None:
    """Integrated time alone then still counts (one verified time is enough), so the TSA's end
    is checked through a bundle with only the timestamp: the SET removed."""
    root = json.loads((VECTORS / "trusted_root.json").read_text())
    root["timestampAuthorities"][0]["validFor"]["end"] = root["timestampAuthorities"][0][
        "validFor"
    ]["start"]
    path = tmp_path / "root.json"
    path.write_text(json.dumps(root))

    def drop_promise(document: dict[str, Any]) -> None:
        del document["verificationMaterial"]["tlogEntries"][0]["inclusionPromise"]

    [finding] = verify_layer(trust(path), SUBJECT, edited(drop_promise))
    assert finding.detail == (
        "a Sigstore bundle that does not verify (not enough sources of verified time)"
    )
    # With the authority trusted, the timestamp alone is a verified time.
    [finding] = verify_layer(trust(), SUBJECT, edited(drop_promise))
    assert finding.valid


def test_an_edited_log_entry_does_not_verify() -> None:
    def other_payload_hash(document: dict[str, Any]) -> None:
        entry = document["verificationMaterial"]["tlogEntries"][0]
        body = json.loads(base64.b64decode(entry["canonicalizedBody"]))
        body["spec"]["content"]["payloadHash"]["value"] = "0" * 64
        entry["canonicalizedBody"] = base64.b64encode(json.dumps(body).encode()).decode()

    [finding] = verify_layer(trust(), SUBJECT, edited(other_payload_hash))
    assert not finding.valid
    assert finding.detail.startswith("a Sigstore bundle that does not verify (invalid log entry")


def _gen_time() -> datetime:
    document = json.loads(BUNDLE)
    [stamp] = document["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"]
    return decode_timestamp_response(base64.b64decode(stamp["signedTimestamp"])).tst_info.gen_time


@pytest.mark.parametrize(("end_offset", "valid"), [(0, True), (1, True), (-1, False)])
def test_a_timestamp_authority_counts_up_to_and_including_its_validity_end(
    tmp_path: Path, end_offset: int, valid: bool
) -> None:
    """The trusted root's `validFor` is a closed interval: a timestamp at its very end counts,
    one a second after does not (the SET removed, so the timestamp is the only verified time)."""
    root = json.loads((VECTORS / "trusted_root.json").read_text())
    end = _gen_time() + timedelta(seconds=end_offset)
    root["timestampAuthorities"][0]["validFor"]["end"] = end.isoformat().replace("+00:00", "Z")
    path = tmp_path / "root.json"
    path.write_text(json.dumps(root))

    def drop_promise(document: dict[str, Any]) -> None:
        del document["verificationMaterial"]["tlogEntries"][0]["inclusionPromise"]

    [finding] = verify_layer(trust(path), SUBJECT, edited(drop_promise))
    assert finding.valid is valid, finding.detail


def test_a_replaced_trusted_root_is_used_at_once(tmp_path: Path) -> None:
    """No restart: the next verification reads the file as it is now."""
    path = tmp_path / "root.json"
    path.write_text((VECTORS / "trusted_root.json").read_text())
    loaded = trust(path)
    [finding] = verify_layer(loaded, SUBJECT, BUNDLE)
    assert finding.valid
    root = json.loads(path.read_text())
    root["certificateAuthorities"] = []
    path.write_text(json.dumps(root))
    [finding] = verify_layer(loaded, SUBJECT, BUNDLE)
    assert not finding.valid
    assert finding.detail.startswith("a Sigstore bundle that does not verify (")


def test_a_bundle_with_a_timestamp_but_no_log_entry_is_refused() -> None:
    """`sigstore attest --no-tlog-upload` writes one: the signature was never made public."""

    def unlogged(document: dict[str, Any]) -> None:
        del document["verificationMaterial"]["tlogEntries"]

    [finding] = verify_layer(trust(), SUBJECT, edited(unlogged))
    assert not finding.valid
    assert finding.detail == "not logged in Rekor (no transparency log entry)"


def test_a_trusted_root_removed_after_loading_is_a_reason_and_the_next_root_is_tried(
    tmp_path: Path,
) -> None:
    """The root file is read on each verification: once removed, it proves nothing and says
    so, and another identity's root still verifies what it signed."""
    gone = tmp_path / "gone.json"
    gone.write_text((VECTORS / "trusted_root.json").read_text())
    identity = {"issuer": ISSUER, "subject": SUBJECT_URI}
    both, problems = parse_trust(
        {
            "identities": {
                "old-ci": {**identity, "trusted_root": str(gone)},
                "ci": {**identity, "trusted_root": str(VECTORS / "trusted_root.json")},
            }
        }
    )
    assert not problems
    alone = trust(gone)
    gone.unlink()
    [finding] = verify_layer(both, SUBJECT, BUNDLE)
    assert (finding.valid, finding.signer) == (True, "ci")
    [finding] = verify_layer(alone, SUBJECT, BUNDLE)
    assert not finding.valid
    assert finding.detail == (
        f"a Sigstore bundle that does not verify (the trusted root {gone} cannot be read "
        "(No such file or directory))"
    )


def test_a_certificate_that_is_not_der_is_not_a_valid_bundle() -> None:
    """The bundle's leaf certificate replaced by bytes that are not DER: the `sigstore` package
    raises a bare `ValueError` while loading the bundle; refused with its first line."""

    def garbage_certificate(document: dict[str, Any]) -> None:
        raw = base64.b64encode(b"not a certificate").decode()
        document["verificationMaterial"]["certificate"]["rawBytes"] = raw

    [finding] = verify_layer(trust(), SUBJECT, edited(garbage_certificate))
    assert (finding.valid, finding.kind) == (False, "bundle")
    assert finding.detail.startswith("not a valid Sigstore bundle (error parsing asn1 value"), (
        finding.detail
    )
