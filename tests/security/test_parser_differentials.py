"""Parser differentials: a manifest or image config that two reasonable decoders read differently
is refused, so the policy never judges one reading while docker runs another.

Each case is pushed through the API. Manifests: 400 MANIFEST_INVALID with the reason (nothing
stored). Configs: the rule that reads them denies with the reason. Where the case is a smuggle,
the test first shows, with the Go-like reader in `tests/security/go_json.py`, that Go really
reads something else than Python.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.oci import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, descriptor, error_codes
from tests.security import go_json
from tests.security.crafted import image_config, push_blobs, put_manifest

GOOD = b"benign layer"
EVIL = b"smuggled layer"
CONFIG = image_config({"org.opencontainers.image.source": "https://git.example.com/app"})


def base() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, CONFIG),
        "layers": [descriptor(OCI_LAYER, GOOD)],
    }


def splice(document: dict[str, Any], raw_members: str) -> bytes:
    """`document` serialised with extra raw members appended (duplicates survive this way)."""
    text = json.dumps(document)
    return (text[:-1] + ", " + raw_members + "}").encode()


def evil_layers() -> str:
    return '"Layers": ' + json.dumps([descriptor(OCI_LAYER, EVIL)])


# (id, manifest bytes, the reason's telling part)
MANIFEST_CASES: list[tuple[str, bytes, str]] = [
    ("smuggled Layers beside layers", splice(base(), evil_layers()), '"Layers"'),
    (
        "smuggled Config beside config",
        splice(base(), '"Config": ' + json.dumps(descriptor(OCI_CONFIG, b"{}"))),
        '"Config"',
    ),
    ("duplicate layers", splice(base(), '"layers": ' + json.dumps([])), '"layers" twice'),
    (
        "duplicate digest inside a descriptor",
        json.dumps(base())
        .replace(
            '"size": 12}]', f'"size": 12, "digest": "{descriptor(OCI_LAYER, EVIL)["digest"]}"}}]'
        )
        .encode(),
        '"digest" twice',
    ),
    (
        "case-variant Digest inside a layer",
        json.dumps(base())
        .replace(
            '"size": 12}]', f'"size": 12, "Digest": "{descriptor(OCI_LAYER, EVIL)["digest"]}"}}]'
        )
        .encode(),
        '"Digest"',
    ),
    (
        "long s: \u017fize read as size by Go",
        json.dumps(base()).replace('"size": 12}]', '"size": 12, "\\u017fize": 99}]').encode(),
        "size",
    ),
    ("MEDIATYPE at the top", splice(base(), '"MEDIATYPE": "x"'), '"MEDIATYPE"'),
    (
        "Kelvin-sign schemaVersion twin",
        splice(base(), '"schemaVersion\\u212a": 3, "\\u017fchemaVersion": 3'),
        "schemaVersion",
    ),
    (
        "manifests and layers both",
        splice(base(), '"manifests": ' + json.dumps([descriptor(OCI_MANIFEST, b"{}")])),
        "both manifests and",
    ),
    ("byte-order mark", b"\xef\xbb\xbf" + json.dumps(base()).encode(), "byte-order mark"),
    ("UTF-16", json.dumps(base()).encode("utf-16"), "not UTF-8"),
    (
        "not UTF-8",
        splice(base(), '"annotations": {"a": "\xe9"}').replace(b"\xc3\xa9", b"\xe9"),
        "not UTF-8",
    ),
    ("NaN", splice(base(), '"x": NaN'), "NaN"),
    ("Infinity", splice(base(), '"x": -Infinity'), "Infinity"),
    ("float overflow", splice(base(), '"x": 1e400'), "out of a float's range"),
    (
        "integer beyond int64",
        json.dumps(base()).replace('"size": 12}]', '"size": 9223372036854775808}]').encode(),
        "outside int64",
    ),
    ("5,000-digit integer", splice(base(), '"x": ' + "9" * 5000), "outside int64"),
    (
        "float schemaVersion",
        json.dumps(base()).replace('"schemaVersion": 2', '"schemaVersion": 2.0').encode(),
        "integer 2",
    ),
    ("lone surrogate", splice(base(), '"annotations": {"a": "\\ud800"}'), "surrogate"),
    ("nested 40 deep", splice(base(), '"x": ' + "[" * 40 + "]" * 40), "nests deeper"),
    (
        "nested 100,000 deep",
        splice(base(), '"x": ' + "[" * 100_000 + "]" * 100_000),
        "nests deeper",
    ),
]


@pytest.fixture
async def registry(client: TestClient) -> TestClient:
    await push_blobs(client, "app/web", CONFIG, GOOD, EVIL, b"{}")
    return client


def test_the_smuggles_are_real_differentials() -> None:
    """Go reads the smuggled pair; Python's exact keys read the benign one."""
    smuggled = splice(base(), evil_layers())
    go = go_json.read(smuggled, go_json.MANIFEST)
    python = go_json.project(json.loads(smuggled), go_json.MANIFEST)
    assert go["layers"][0]["digest"] == descriptor(OCI_LAYER, EVIL)["digest"]
    assert python["layers"][0]["digest"] == descriptor(OCI_LAYER, GOOD)["digest"]
    long_s = json.dumps(base()).replace('"size": 12}]', '"size": 12, "\\u017fize": 99}]')
    assert go_json.read(long_s.encode(), go_json.MANIFEST)["layers"][0]["size"] == 99


@pytest.mark.parametrize(
    ("content", "reason"), [c[1:] for c in MANIFEST_CASES], ids=[c[0] for c in MANIFEST_CASES]
)
async def test_ambiguous_manifest_is_refused(
    registry: TestClient, content: bytes, reason: str
) -> None:
    resp = await put_manifest(registry, "app/web", "v1", content)
    assert resp.status == 400, await resp.text()
    body = await resp.json()
    assert error_codes(body) == ["MANIFEST_INVALID"]
    assert reason in body["errors"][0]["detail"]["reason"], body
    assert (await registry.get("/v2/app/web/manifests/v1")).status == 404


@pytest.mark.parametrize(
    ("media_type", "extra", "reason"),
    [
        (OCI_INDEX, {}, "must not have config"),
        (OCI_MANIFEST, {"manifests": []}, "both manifests and"),
    ],
    ids=["index with config and layers", "image manifest with manifests"],
)
async def test_media_type_and_shape_must_agree(
    registry: TestClient, media_type: str, extra: dict[str, Any], reason: str
) -> None:
    document = {**base(), "mediaType": media_type, **extra}
    resp = await put_manifest(registry, "app/web", "v1", document, media_type)
    assert resp.status == 400
    body = await resp.json()
    assert error_codes(body) == ["MANIFEST_INVALID"]
    assert reason in body["errors"][0]["detail"]["reason"]


async def test_index_platform_case_variant_is_refused(registry: TestClient) -> None:
    child = descriptor(
        OCI_MANIFEST,
        b"{}",
        platform={"os": "linux", "architecture": "amd64", "Architecture": "s390x"},
    )
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]}
    resp = await put_manifest(registry, "app/web", "v1", index, OCI_INDEX)
    assert resp.status == 400
    assert '"Architecture"' in (await resp.json())["errors"][0]["detail"]["reason"]


async def test_a_clean_manifest_is_still_accepted(registry: TestClient) -> None:
    resp = await put_manifest(registry, "app/web", "v1", base())
    assert resp.status == 201, await resp.text()


# -- image configs the policy reads -----------------------------------------------------------

CONFIG_POLICY = """\
version: 1
rules:
  - name: provenance
    match: {repositories: ["app/**"], on: [push]}
    require:
      labels: {org.opencontainers.image.source: "^https://git.example.com/"}
  - name: amd64 only
    match: {repositories: ["app/**"], on: [push]}
    require:
      platforms: {allowed: [linux/amd64]}
"""

LABELS = '{"org.opencontainers.image.source": "https://git.example.com/app"}'

CONFIG_CASES: list[tuple[str, bytes, str]] = [
    (
        "labels beside Labels",
        (
            '{"architecture": "amd64", "os": "linux", "config": {"Labels": '
            + LABELS
            + ', "labels": {}}}'
        ).encode(),
        '"labels"',
    ),
    (
        "Labels twice, good one last",
        (
            '{"architecture": "amd64", "os": "linux", "config": {"Labels": {}, "Labels": '
            + LABELS
            + "}}"
        ).encode(),
        '"Labels" twice',
    ),
    (
        "Architecture beside architecture",
        (
            '{"architecture": "amd64", "Architecture": "s390x", "os": "linux", '
            + '"config": {"Labels": '
            + LABELS
            + "}}"
        ).encode(),
        '"Architecture"',
    ),
    (
        "byte-order mark",
        b"\xef\xbb\xbf"
        + (
            '{"architecture": "amd64", "os": "linux", "config": {"Labels": ' + LABELS + "}}"
        ).encode(),
        "byte-order mark",
    ),
    (
        "NaN",
        (
            '{"architecture": "amd64", "os": "linux", "x": NaN, "config": {"Labels": '
            + LABELS
            + "}}"
        ).encode(),
        "NaN",
    ),
]


@pytest.fixture
async def gated(start_client: Any, tmp_path: Path) -> TestClient:
    path = tmp_path / "policy.yaml"
    path.write_text(CONFIG_POLICY)
    return await start_client(policy={"file": str(path), "reload": False})


@pytest.mark.parametrize(
    ("config", "reason"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
async def test_ambiguous_config_is_denied(gated: TestClient, config: bytes, reason: str) -> None:
    await push_blobs(gated, "app/web", config, GOOD)
    document = {**base(), "config": descriptor(OCI_CONFIG, config)}
    resp = await put_manifest(gated, "app/web", "v1", document)
    assert resp.status == 403, await resp.text()
    body = await resp.json()
    assert error_codes(body) == ["DENIED"]
    message = body["errors"][0]["message"]
    assert message.startswith('rule "provenance": cannot be judged: ')
    assert reason in message


async def test_clean_config_passes(gated: TestClient) -> None:
    await push_blobs(gated, "app/web", CONFIG, GOOD)
    resp = await put_manifest(gated, "app/web", "v1", base())
    assert resp.status == 201, await resp.text()
