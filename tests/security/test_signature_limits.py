"""The edges of what counts as a signature manifest and of its verification limits: a tag that
looks like cosign's but names another algorithm or a short digest, a layer size that is a
boolean, negative or a string, a payload exactly at its limit and one byte over, bytes that are
not JSON. What is over a limit is refused at push with the limit named; what is not a signature
is left to the manifest rules (never a server error).

Through `policies.signatures.discovery`'s public functions, which the push path calls; the
whole-push attacks (3000 layers, a flood of referrers) are in `test_signature_cost.py`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from policies.signatures.discovery import (
    MAX_SIGNATURE_BLOB,
    MAX_SIGNATURE_LAYERS,
    MAX_SIMPLE_SIGNING_PAYLOAD,
    limits_problem,
    push_problem,
    read_blob,
    signed_subject,
    subject_of_sig_tag,
)
from storage.filesystem import FilesystemBlobStore
from storage.layout import DataLayout
from storage.oci.digests import parse_digest

HEX = "ab" * 32
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
SIG_TAG = f"sha256-{HEX}.sig"


def manifest(*layers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"schemaVersion": 2, "layers": list(layers), **fields}


def layer(size: Any, media_type: str = SIMPLE_SIGNING) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": "sha256:" + "cd" * 32, "size": size}


@pytest.mark.parametrize(
    "tag",
    [
        f"sha1-{HEX}.sig",  # sorts before sha256
        f"sha512-{HEX}.sig",  # and after
        f"sha256-{HEX[:-1]}.sig",  # a digest one digit short
        f"sha256-{HEX}0.sig",  # one digit long
        f"sha256{HEX}.sig",
        f"sha256-{HEX}.att",
        None,
    ],
)
def test_only_cosigns_own_spelling_names_a_signed_image(tag: str | None) -> None:
    assert subject_of_sig_tag(tag) is None


def test_the_sig_tag_names_its_image() -> None:
    assert subject_of_sig_tag(SIG_TAG) == f"sha256:{HEX}"
    assert signed_subject(b"not even json", SIG_TAG) == f"sha256:{HEX}"


@pytest.mark.parametrize("size", [True, False, -1, "10", 1.5, None])
def test_a_layer_size_that_is_not_a_count_is_refused(size: Any) -> None:
    assert limits_problem(manifest(layer(size))) == (
        "has a signature layer without a valid size (layer 0)"
    )


@pytest.mark.parametrize(
    ("media_type", "limit"),
    [(SIMPLE_SIGNING, MAX_SIMPLE_SIGNING_PAYLOAD), (BUNDLE, MAX_SIGNATURE_BLOB)],
)
def test_a_payload_at_its_limit_passes_and_one_byte_over_is_refused(
    media_type: str, limit: int
) -> None:
    assert limits_problem(manifest(layer(0, media_type), layer(limit, media_type))) is None
    assert limits_problem(manifest(layer(0, media_type), layer(limit + 1, media_type))) == (
        f"has a {media_type} layer of {limit + 1} bytes (layer 1), more than the limit of {limit}"
    )
    far = limits_problem(manifest(layer(limit * 4, media_type)))
    assert far is not None and far.startswith(f"has a {media_type} layer of {limit * 4} bytes")


def test_the_layer_count_limit_is_exact() -> None:
    at = manifest(*(layer(10) for _ in range(MAX_SIGNATURE_LAYERS)))
    assert limits_problem(at) is None
    over = manifest(*(layer(10) for _ in range(MAX_SIGNATURE_LAYERS + 1)))
    assert limits_problem(over) == (
        f"holds {MAX_SIGNATURE_LAYERS + 1} signature layers, more than the limit of "
        f"{MAX_SIGNATURE_LAYERS}"
    )


def test_a_sig_tag_over_the_limits_is_refused_at_push_even_without_a_subject() -> None:
    over = json.dumps(manifest(layer(MAX_SIMPLE_SIGNING_PAYLOAD + 1))).encode()
    assert push_problem(over, SIG_TAG) == (
        f"signature manifest has a {SIMPLE_SIGNING} layer of {MAX_SIMPLE_SIGNING_PAYLOAD + 1} "
        f"bytes (layer 0), more than the limit of {MAX_SIMPLE_SIGNING_PAYLOAD}"
    )
    # Under another tag, a manifest with no subject is not a signature: the limits do not apply.
    assert push_problem(over, "v1") is None
    referrer = json.dumps(
        manifest(
            layer(MAX_SIMPLE_SIGNING_PAYLOAD + 1),
            subject={
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{HEX}",
                "size": 10,
            },
        )
    ).encode()
    assert push_problem(referrer, None) is not None


@pytest.mark.parametrize("content", [b"{", b"\xff\xfe", b"[1, 2]", b'"text"', b"null"])
def test_bytes_that_are_not_a_json_object_are_left_to_the_manifest_parser(content: bytes) -> None:
    assert push_problem(content, SIG_TAG) is None
    assert push_problem(content, None) is None
    assert signed_subject(content, None) is None


async def test_a_signature_blob_is_read_up_to_its_limit_and_not_a_byte_more(tmp_path: Path) -> None:
    store = FilesystemBlobStore(DataLayout(tmp_path), fsync=False)
    stored = {}
    for size in (1000, 1001):
        content = b"x" * size
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        await store.start_upload(f"u{size}")
        await store.append(f"u{size}", content)
        await store.commit(f"u{size}", parse_digest(digest))
        stored[size] = digest
    assert await read_blob(store, stored[1000], 1000) == b"x" * 1000
    assert await read_blob(store, stored[1001], 1000) is None
    assert await read_blob(store, "sha256:" + "0" * 64, 1000) is None  # missing: no signature
    assert await read_blob(store, "not a digest", 1000) is None


SUBJECT = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{HEX}"}


def test_a_signature_referrer_names_its_subject_and_nothing_else_does() -> None:
    """The image a pushed referrer signs is its `subject` (what the push path verifies and the
    library follows): only for a signature manifest with a subject naming a digest; a plain
    image, an SBOM referrer or a subject of the wrong shape signs nothing (never a crash)."""
    bundle = manifest(layer(10, BUNDLE), subject={**SUBJECT, "size": 10})
    assert signed_subject(json.dumps(bundle).encode(), None) == f"sha256:{HEX}"
    assert signed_subject(json.dumps(bundle).encode(), "v1") == f"sha256:{HEX}"
    sbom = manifest(layer(10, "application/spdx+json"), subject={**SUBJECT, "size": 10})
    assert signed_subject(json.dumps(sbom).encode(), None) is None
    for subject in (None, f"sha256:{HEX}", [SUBJECT], {"digest": 7}, {"size": 10}):
        shaped = manifest(layer(10, BUNDLE), subject=subject)
        assert signed_subject(json.dumps(shaped).encode(), None) is None, subject
    assert signed_subject(json.dumps(manifest(layer(10, BUNDLE))).encode(), "v1") is None
