"""Each floor's own exception is answered once, in `registry.errors`, with the spec's code, the
status and the exact body the client always got."""

from __future__ import annotations

import json

import pytest

from policies.errors import PolicyDenied
from registry.errors import STATUSES, RegistryError, error_response, spec_error, status_of
from storage.errors import BlobDamaged, StorageError, StorageFull, StorageUnavailable
from storage.oci.digests import Digest, parse_digest
from storage.oci.errors import ERROR_CODES, TOOMANYREQUESTS, OciError

DIGEST = Digest.of(b"layer")


@pytest.mark.parametrize(
    ("exc", "status", "entry"),
    [
        (
            StorageFull("disk"),
            507,
            {
                "code": "STORAGE_FULL",
                "message": "the registry's storage is full: nothing was stored, retry once freed "
                "(no space left on the registry's disk)",
                "detail": {"reason": "no space left on the registry's disk"},
            },
        ),
        (
            StorageUnavailable({"reason": "connection refused"}),
            503,
            {
                "code": "UNAVAILABLE",
                "message": "the storage backend is unavailable",
                "detail": {"reason": "connection refused"},
            },
        ),
        (
            BlobDamaged(DIGEST, 5, None),
            404,
            {
                "code": "BLOB_UNKNOWN",
                "message": f"blob {DIGEST} is damaged in storage (missing); push it again to "
                "repair it",
                "detail": {
                    "digest": str(DIGEST),
                    "reason": "stored blob is damaged (missing); push it again",
                },
            },
        ),
        (
            PolicyDenied("unsigned: no trusted signature", {"rules": ["signed"]}),
            403,
            {
                "code": "DENIED",
                "message": "unsigned: no trusted signature",
                "detail": {"rules": ["signed"]},
            },
        ),
    ],
)
def test_a_domain_exception_is_answered_with_its_code_status_and_words(exc, status, entry):
    response = error_response(exc)
    assert response.status == status
    assert response.content_type == "application/json"
    assert json.loads(response.text) == {"errors": [entry]}


def test_a_vocabulary_error_carries_no_status_and_is_answered_by_its_code():
    with pytest.raises(OciError) as caught:
        parse_digest("sha256:short")
    assert not hasattr(caught.value.error, "status")
    response = error_response(caught.value)
    assert response.status == 400
    assert json.loads(response.text)["errors"][0]["code"] == "DIGEST_INVALID"


def test_every_registered_code_has_a_status():
    assert set(ERROR_CODES.values()) <= set(STATUSES)
    assert status_of(TOOMANYREQUESTS) == 429


def test_the_http_floor_keeps_its_headers():
    exc = RegistryError(TOOMANYREQUESTS, headers={"Retry-After": "30"})
    assert spec_error(exc) is exc
    response = error_response(exc)
    assert (response.status, response.headers["Retry-After"]) == (429, "30")


def test_a_storage_failure_without_a_code_of_its_own_is_unavailable():
    response = error_response(StorageError("the backend refused", {"reason": "read-only"}))
    assert response.status == 503
    assert json.loads(response.text)["errors"][0]["code"] == "UNAVAILABLE"


def test_an_exception_with_no_code_is_refused():
    with pytest.raises(TypeError):
        spec_error(ValueError("not a domain failure"))  # type: ignore[arg-type]
