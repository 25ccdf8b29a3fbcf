"""Exemption by appearance: a runnable image dressed as a signature or an artifact is still an
image, judged by every image rule; only a signature by structure, or an artifact type the policy
names, skips them. (Through the API; the docker and skopeo pulls are in
`tests/e2e/test_fail_closed_clients.py`.)"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from storage.oci.image_kind import PAYLOAD_HEAD, Kind, classify, inert_payload, runtime_unpacks
from tests.oci import (
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    error_codes,
    push_image,
    sha256,
)
from tests.security.crafted import (
    SIMPLE_SIGNING,
    image_config,
    push_blobs,
    push_runnable,
    push_simple_signature,
    put_manifest,
)

POLICY = """\
version: 1
rules:
  - name: provenance
    match: {repositories: ["app/**"], on: [pull]}
    require:
      labels: {org.opencontainers.image.source: "^https://git.example.com/"}
"""
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
NOTATION = "application/vnd.cncf.notary.signature"
SIG_TAG = "sha256-" + "ab" * 32 + ".sig"
DENIAL = (
    'rule "provenance": label org.opencontainers.image.source missing; set it with LABEL in '
    "the Dockerfile"
)


def start(policy: str) -> Any:
    @pytest.fixture
    async def fixture(start_client: Any, tmp_path: Path) -> TestClient:
        path = tmp_path / "policy.yaml"
        path.write_text(policy)
        return await start_client(policy={"file": str(path), "reload": False})

    return fixture


gated = start(POLICY)
exempting = start(POLICY + f"artifacts:\n  exempt_types: [{HELM_CONFIG}]\n")


async def assert_denied(client: TestClient, reference: str, message: str = DENIAL) -> None:
    resp = await client.get(f"/v2/app/web/manifests/{reference}")
    assert resp.status == 403, await resp.text()
    body = await resp.json()
    assert error_codes(body) == ["DENIED"]
    assert body["errors"][0]["message"] == message


async def assert_pulled(client: TestClient, reference: str) -> None:
    resp = await client.get(f"/v2/app/web/manifests/{reference}")
    assert resp.status == 200, await resp.text()


# -- disguises: each a runnable, unlabelled image --------------------------------------------

DISGUISES: list[tuple[str, dict[str, Any]]] = [
    ("subject naming a missing digest", {"subject": descriptor(OCI_MANIFEST, b"no such image")}),
    ("artifactType of a Notation signature", {"artifactType": NOTATION}),
    ("config type a runtime does not list", {"config_type": "application/vnd.acme.config+json"}),
    ("config type application/json (docker runs it)", {"config_type": "application/json"}),
    ("config type application/octet-stream", {"config_type": "application/octet-stream"}),
    ("Helm config type on a runnable layer", {"config_type": HELM_CONFIG}),
    ("docker-accepted layer type", {"layer_type": "application/vnd.docker.image.rootfs.diff.tar"}),
    ("upper-case layer type (docker lower-cases)", {"layer_type": OCI_LAYER.upper()}),
]


@pytest.mark.parametrize("disguise", [d[1] for d in DISGUISES], ids=[d[0] for d in DISGUISES])
async def test_a_disguised_image_is_judged(gated: TestClient, disguise: dict[str, Any]) -> None:
    extra = dict(disguise)
    fields = {k: extra.pop(k) for k in ("config_type", "layer_type") if k in extra}
    resp = await push_runnable(gated, "app/web", "v1", **fields, **extra)
    assert resp.status == 201, await resp.text()
    await assert_denied(gated, "v1")


async def test_subject_naming_a_real_image_exempts_nothing(gated: TestClient) -> None:
    subject, content = await push_image(gated, "app/web", "base")
    resp = await push_runnable(gated, "app/web", "v1", subject=descriptor(OCI_MANIFEST, content))
    assert resp.status == 201
    assert subject == sha256(content)
    await assert_denied(gated, "v1")
    # Also when fetched as a referrer's digest.
    await assert_denied(gated, resp.headers["Docker-Content-Digest"])


@pytest.mark.parametrize("suffix", ["sig", "att", "sbom"])
async def test_a_cosign_looking_tag_exempts_nothing(gated: TestClient, suffix: str) -> None:
    tag = SIG_TAG.replace(".sig", f".{suffix}")
    resp = await push_runnable(gated, "app/web", tag)
    assert resp.status == 201
    await assert_denied(gated, tag)
    await assert_denied(gated, resp.headers["Docker-Content-Digest"])


async def test_an_index_with_artifact_type_is_judged_through_its_children(
    gated: TestClient,
) -> None:
    _, content = await push_image(gated, "app/web", "child")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.acme.bundle",
        "manifests": [
            descriptor(OCI_MANIFEST, content, platform={"os": "linux", "architecture": "amd64"})
        ],
    }
    resp = await put_manifest(gated, "app/web", "v1", index, OCI_INDEX)
    assert resp.status == 201
    await assert_denied(
        gated,
        "v1",
        'rule "provenance": label org.opencontainers.image.source missing on linux/amd64; set '
        "it with LABEL in the Dockerfile",
    )


async def test_a_docker_manifest_with_an_unknown_config_is_an_image(gated: TestClient) -> None:
    config, layer = image_config(), b"docker layer"
    await push_blobs(gated, "app/web", config, layer)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor("application/vnd.acme.config+json", config),
        "layers": [descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", layer)],
    }
    assert (await put_manifest(gated, "app/web", "v1", manifest, DOCKER_MANIFEST)).status == 201
    await assert_denied(gated, "v1")


async def test_a_signature_plus_a_runnable_layer_is_an_image(gated: TestClient) -> None:
    config, payload, layer = image_config(), b'{"critical": {}}', b"runnable"
    await push_blobs(gated, "app/web", config, payload, layer)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(SIMPLE_SIGNING, payload), descriptor(OCI_LAYER, layer)],
    }
    assert (await put_manifest(gated, "app/web", SIG_TAG, manifest)).status == 201
    await assert_denied(gated, SIG_TAG)


# -- what stays exempt ------------------------------------------------------------------------


async def test_a_signature_by_structure_is_pulled(gated: TestClient) -> None:
    resp = await push_simple_signature(gated, "app/web", SIG_TAG, b'{"critical": {}}')
    assert resp.status == 201
    await assert_pulled(gated, SIG_TAG)


async def test_a_notation_signature_is_pulled(gated: TestClient) -> None:
    empty, envelope = b"{}", b'{"payload": "e30", "signatures": []}'
    await push_blobs(gated, "app/web", empty, envelope)
    _, content = await push_image(gated, "app/web", "base")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": NOTATION,
        "config": descriptor("application/vnd.oci.empty.v1+json", empty),
        "layers": [descriptor("application/jose+json", envelope)],
        "subject": descriptor(OCI_MANIFEST, content),
    }
    resp = await put_manifest(gated, "app/web", "notation-sig", manifest)
    assert resp.status == 201
    await assert_pulled(gated, resp.headers["Docker-Content-Digest"])


async def test_an_artifact_is_judged_unless_the_policy_exempts_its_type(
    gated: TestClient, exempting: TestClient
) -> None:
    for client in (gated, exempting):
        chart_config, chart = json.dumps({"name": "chart"}).encode(), b"helm chart"
        await push_blobs(client, "app/web", chart_config, chart)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(HELM_CONFIG, chart_config),
            "layers": [descriptor(HELM_LAYER, chart)],
        }
        assert (await put_manifest(client, "app/web", "chart", manifest)).status == 201
    await assert_denied(gated, "chart")
    await assert_pulled(exempting, "chart")


async def test_a_named_exemption_never_covers_a_runnable_image(exempting: TestClient) -> None:
    resp = await push_runnable(exempting, "app/web", "v1", config_type=HELM_CONFIG)
    assert resp.status == 201
    await assert_denied(exempting, "v1")
    resp = await push_runnable(exempting, "app/web", "v2", artifactType=HELM_CONFIG)
    assert resp.status == 201
    await assert_denied(exempting, "v2")


# -- the classification itself ----------------------------------------------------------------


def manifest(config_type: str, *layer_types: str, **extra: Any) -> dict[str, Any]:
    return {
        "config": {"mediaType": config_type},
        "layers": [{"mediaType": t} for t in layer_types],
        **extra,
    }


@pytest.mark.parametrize(
    ("document", "kind"),
    [
        (manifest(OCI_CONFIG, OCI_LAYER), Kind.IMAGE),
        (manifest(OCI_CONFIG), Kind.IMAGE),  # no layers: runtimes still take it
        (manifest("text/html", "application/x-whatever"), Kind.IMAGE),
        (manifest(HELM_CONFIG, "application/vnd.oci.image.layer.v1.tar+zstd"), Kind.IMAGE),
        (
            manifest(HELM_CONFIG, "application/vnd.docker.image.rootfs.diff.tar.gzip+enc"),
            Kind.IMAGE,
        ),
        (manifest(OCI_CONFIG, SIMPLE_SIGNING, subject={"digest": "x"}), Kind.SIGNATURE),
        (manifest(OCI_CONFIG, "application/vnd.dsse.envelope.v1+json"), Kind.SIGNATURE),
        (manifest("application/vnd.oci.empty.v1+json", "application/cose"), Kind.SIGNATURE),
        (manifest(OCI_CONFIG, SIMPLE_SIGNING, OCI_LAYER), Kind.IMAGE),
        (manifest(HELM_CONFIG, HELM_LAYER), Kind.ARTIFACT),
        (manifest(HELM_CONFIG, HELM_LAYER, artifactType=NOTATION), Kind.ARTIFACT),
        ({"manifests": [], "artifactType": "x"}, Kind.INDEX),
    ],
)
def test_classification(document: dict[str, Any], kind: Kind) -> None:
    assert classify(document).kind is kind


def test_runtime_layer_types() -> None:
    assert runtime_unpacks("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip")
    assert runtime_unpacks("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
    assert runtime_unpacks("application/octet-stream")
    assert runtime_unpacks("")
    assert not runtime_unpacks(SIMPLE_SIGNING)
    assert not runtime_unpacks("application/vnd.oci.imagex")
    assert not runtime_unpacks(HELM_LAYER)


# -- a signature's bytes must be inert: podman unpacks a tar whatever its layer type says ----


def tar_archive(name: str = "bin/payload") -> bytes:
    """A tar of one executable script; `name` (latin-1) chooses its first bytes."""
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT, encoding="latin-1"
    ) as tar:
        info = tarfile.TarInfo(name)
        data = b"#!/bin/sh\necho smuggled\n"
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("payload_type", "payload", "why"),
    [
        (SIMPLE_SIGNING, tar_archive(), "is not a JSON object"),
        (SIMPLE_SIGNING, tar_archive('{"critical":1}'), "is a tar archive"),
        (SIMPLE_SIGNING, gzip.compress(b'{"critical": {}}'), "is not a JSON object"),
        ("application/cose", tar_archive(), "does not start as a COSE envelope"),
        ("application/cose", tar_archive("\u00d2payload"), "is a tar archive"),
    ],
    ids=["tar", "tar starting with {", "gzip", "tar as COSE", "tar starting as COSE"],
)
async def test_a_signature_type_over_an_archive_is_an_image(
    gated: TestClient, payload_type: str, payload: bytes, why: str
) -> None:
    config = image_config()
    await push_blobs(gated, "app/web", config, payload)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(payload_type, payload)],
    }
    assert why in (inert_payload(payload_type, payload[:PAYLOAD_HEAD]) or "")
    assert (await put_manifest(gated, "app/web", SIG_TAG, manifest)).status == 201
    await assert_denied(gated, SIG_TAG)


def test_inert_payloads() -> None:
    assert inert_payload(SIMPLE_SIGNING, b' {"critical": {}}') is None
    assert inert_payload("application/cose", b"\xd2\x84\x43") is None
    header = tar_archive('{"critical":1}')[:512]
    assert inert_payload(SIMPLE_SIGNING, header) == ("its signature payload is a tar archive")
