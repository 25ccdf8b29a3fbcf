"""Signatures through the real clients: `docker push` an image, sign it the way cosign does (a
`.sig` manifest made here with `cryptography`, pushed over HTTP) or attach a Sigstore bundle as an
OCI referrer with the `oras` library; `docker pull` is allowed, and refused with the reason when
the signature is by another key."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tests.e2e.conftest import (
    PUSH_DIGEST,
    DockerDaemon,
    get_manifest,
    http,
    make_rootfs_tar,
    sha256_digest,
)
from tests.policies.test_signatures_bundles import keyed_bundle, statement
from tests.server_process import RegistryProcess, start_registry
from tests.signing import public_pem, simple_signing_payload

pytestmark = pytest.mark.e2e

oras_client = pytest.importorskip(
    "oras.client", reason="the `oras` Python package is not installed"
)
oras_oci = pytest.importorskip("oras.oci")

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"

POLICY = """\
version: 1
trust:
  keys:
    release: {pem_file: release.pub}
rules:
  - name: signed by release
    match: {repositories: ["e2e/signed-*"], on: [pull]}
    require:
      signature: {any_of: [release]}
"""


@pytest.fixture(scope="module")
def release_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def signing_registry(
    e2e_tmp: Path, release_key: ec.EllipticCurvePrivateKey
) -> Iterator[RegistryProcess]:
    """A Trustyard process whose policy trusts `release_key`."""
    folder = e2e_tmp / "signing-policy"
    folder.mkdir()
    (folder / "release.pub").write_bytes(public_pem(release_key))
    (folder / "policy.yaml").write_text(POLICY)
    server = start_registry(
        e2e_tmp / "signing-data", extra_args=["--policy", str(folder / "policy.yaml")]
    )
    try:
        yield server
    finally:
        server.stop()


def pushed_image(dockerd: DockerDaemon, e2e_tmp: Path, ref: str) -> str:
    """Import a one-layer image as `ref`, `docker push` it, return the pushed digest."""
    tarball = e2e_tmp / "signed-image.tar"
    tarball.write_bytes(make_rootfs_tar({"etc/signed-e2e": ref.encode()}))
    dockerd.docker("import", str(tarball), ref)
    match = PUSH_DIGEST.search(dockerd.docker("push", ref).stdout)
    assert match is not None
    dockerd.docker("rmi", "--force", ref, check=False)
    return match.group(2)


def upload(registry: RegistryProcess, name: str, data: bytes) -> dict[str, object]:
    """A monolithic blob upload; the blob's descriptor (without media type)."""
    digest = sha256_digest(data)
    resp = http(
        "POST",
        f"{registry.url}/v2/{name}/blobs/uploads/?digest={digest}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert resp.status == 201, (resp.status, resp.body)
    return {"digest": digest, "size": len(data)}


def push_cosign_signature(
    registry: RegistryProcess, name: str, image: str, key: ec.EllipticCurvePrivateKey
) -> None:
    """What `cosign sign --key` (cosign 2) stores: a config, the simple signing payload as the one
    layer with the base64 signature annotation, under the tag `sha256-<hex>.sig`."""
    payload = simple_signing_payload(f"{registry.host}/{name}", image)
    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    layer = upload(registry, name, payload)
    config = json.dumps(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            "config": {},
        },
        separators=(",", ":"),
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **upload(registry, name, config)},
        "layers": [
            {
                "mediaType": SIMPLE_SIGNING,
                **layer,
                "annotations": {
                    "dev.cosignproject.cosign/signature": base64.b64encode(signature).decode()
                },
            }
        ],
    }
    tag = image.replace(":", "-") + ".sig"
    resp = http(
        "PUT",
        f"{registry.url}/v2/{name}/manifests/{tag}",
        data=json.dumps(manifest, separators=(",", ":")).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201, (resp.status, resp.body)


def test_docker_pull_of_an_image_signed_by_release(
    dockerd: DockerDaemon,
    signing_registry: RegistryProcess,
    e2e_tmp: Path,
    release_key: ec.EllipticCurvePrivateKey,
) -> None:
    name = "e2e/signed-cosign"
    ref = f"{signing_registry.host}/{name}:v1"
    digest = pushed_image(dockerd, e2e_tmp, ref)
    unsigned = dockerd.docker("pull", ref, check=False)
    assert unsigned.returncode != 0
    assert 'rule "signed by release": needs a signature by release; found no signature' in (
        unsigned.stdout + unsigned.stderr
    )
    push_cosign_signature(signing_registry, name, digest, release_key)
    pulled = dockerd.docker("pull", ref)
    assert digest in pulled.stdout


def test_docker_pull_of_an_image_signed_by_another_key_is_refused(
    dockerd: DockerDaemon, signing_registry: RegistryProcess, e2e_tmp: Path
) -> None:
    name = "e2e/signed-other"
    ref = f"{signing_registry.host}/{name}:v1"
    digest = pushed_image(dockerd, e2e_tmp, ref)
    push_cosign_signature(signing_registry, name, digest, ec.generate_private_key(ec.SECP256R1()))
    refused = dockerd.docker("pull", ref, check=False)
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert (
        'denied: rule "signed by release": needs a signature by release; '
        "found 1 signature, by an unknown key (sha256:"
    ) in output


class Client(oras_client.OrasClient):  # type: ignore[misc, name-defined]
    """The oras client, plus the OCI 1.1 `artifactType` cosign 3 sets on bundle referrers."""

    def upload_manifest(self, manifest, container):  # type: ignore[no-untyped-def]
        return super().upload_manifest({**manifest, "artifactType": BUNDLE_TYPE}, container)


def test_a_sigstore_bundle_pushed_with_oras_allows_docker_pull(
    dockerd: DockerDaemon,
    signing_registry: RegistryProcess,
    e2e_tmp: Path,
    release_key: ec.EllipticCurvePrivateKey,
) -> None:
    name = "e2e/signed-bundle"
    ref = f"{signing_registry.host}/{name}:v1"
    digest = pushed_image(dockerd, e2e_tmp, ref)
    assert dockerd.docker("pull", ref, check=False).returncode != 0
    image = get_manifest(signing_registry, name, digest)
    work = e2e_tmp / "bundle"
    work.mkdir()
    # The statement names the repository it is pushed to: a statement for another repository
    # does not count (docker_reference is on by default).
    bundle, _ = keyed_bundle(release_key, statement(digest, name=f"{signing_registry.host}/{name}"))
    (work / "image.sigstore.json").write_text(json.dumps(bundle))
    client = Client(hostname=signing_registry.host, insecure=True)
    resp = client.push(
        target=f"{signing_registry.host}/{name}:bundle",
        files=[f"{work / 'image.sigstore.json'}:{BUNDLE_TYPE}"],
        manifest_config=f"{work / 'no-such-config'}:{EMPTY_CONFIG}",
        subject=oras_oci.Subject(image.headers["content-type"], digest, len(image.body)),
        disable_path_validation=True,
        quiet=True,
    )
    assert resp.status_code == 201, (resp.status_code, resp.text)
    pulled = dockerd.docker("pull", ref)
    assert digest in pulled.stdout
