"""oras (Python library) artifacts, subjects and the OCI 1.1 referrers API against Trustyard."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.conftest import OCI_INDEX, OCI_MANIFEST, get_manifest, http, list_tags, sha256_digest
from tests.server_process import RegistryProcess

pytestmark = pytest.mark.e2e

oras_client = pytest.importorskip(
    "oras.client", reason="the `oras` Python package is not installed"
)
oras_oci = pytest.importorskip("oras.oci")

ARTIFACT_TYPE_REPORT = "application/vnd.trustyard.e2e.report.v1+json"
ARTIFACT_TYPE_SIGNATURE = "application/vnd.trustyard.e2e.signature.v1+json"
ARTIFACT_TYPE_SBOM = "application/vnd.trustyard.e2e.sbom.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

REPORT = b"trustyard e2e report\n" + b"x" * 4096
SIGNATURE = b"-----BEGIN FAKE SIGNATURE-----\nnot really a signature\n"
SBOM = json.dumps({"spdxVersion": "SPDX-2.3", "name": "trustyard-e2e"}).encode()


class Client(oras_client.OrasClient):
    """The oras client, plus an OCI 1.1 `artifactType` field on the manifests it pushes.

    oras-py 0.2 has no artifactType argument; everything else (blob uploads, the subject
    field, annotations, the manifest PUT) is the library's own code.
    """

    artifact_type: str | None = None

    def upload_manifest(self, manifest, container):
        if self.artifact_type is not None:
            manifest = {**manifest, "artifactType": self.artifact_type}
        return super().upload_manifest(manifest, container)


def referrers(registry: RegistryProcess, name: str, digest: str, query: str = "") -> tuple:
    resp = http("GET", f"{registry.url}/v2/{name}/referrers/{digest}{query}")
    assert resp.status == 200, f"GET referrers -> {resp.status} {resp.headers} {resp.body!r}"
    assert resp.headers.get("content-type", "").split(";")[0] == OCI_INDEX, resp.headers
    index = json.loads(resp.body)
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    return resp, index["manifests"]


def test_oras_push_subject_referrers_pull(module_registry: RegistryProcess, e2e_tmp: Path) -> None:
    host = module_registry.host
    name = "e2e/oras"
    work = e2e_tmp / "oras"
    work.mkdir()
    (work / "report.txt").write_bytes(REPORT)
    (work / "report.json").write_text(json.dumps({"kind": "report"}))
    (work / "signature.pem").write_bytes(SIGNATURE)
    (work / "sig-config.json").write_text(json.dumps({"signer": "e2e"}))
    (work / "sbom.spdx.json").write_bytes(SBOM)

    client = Client(hostname=host, insecure=True)

    # 1. The subject: a plain artifact whose config media type is its artifact type, its file
    #    uploaded in five chunks.
    resp = client.push(
        target=f"{host}/{name}:v1",
        files=[f"{work / 'report.txt'}:text/plain"],
        manifest_config=f"{work / 'report.json'}:{ARTIFACT_TYPE_REPORT}",
        manifest_annotations={"org.opencontainers.image.description": "e2e subject"},
        do_chunked=True,  # POST, then several PATCHes with Content-Range, then PUT ?digest=
        chunk_size=1000,
        disable_path_validation=True,
        quiet=True,
    )
    assert resp.status_code == 201, (resp.status_code, resp.text)
    subject_digest = resp.headers["Docker-Content-Digest"]
    manifest_resp = get_manifest(module_registry, name, "v1")
    assert manifest_resp.status == 200
    assert manifest_resp.headers.get("docker-content-digest") == subject_digest
    assert sha256_digest(manifest_resp.body) == subject_digest
    assert manifest_resp.headers.get("content-type") == OCI_MANIFEST
    subject = oras_oci.Subject(OCI_MANIFEST, subject_digest, len(manifest_resp.body))

    # Nothing refers to it yet: 200 with an empty index, never 404.
    _, empty = referrers(module_registry, name, subject_digest)
    assert empty == []

    # 2. A referrer without artifactType: the referrers API reports config.mediaType.
    sig_annotations = {
        "org.trustyard.e2e.kind": "signature",
        "org.opencontainers.image.created": "2024-01-01T00:00:00Z",
    }
    resp = client.push(
        target=f"{host}/{name}:signature",
        files=[f"{work / 'signature.pem'}:application/vnd.trustyard.e2e.pem"],
        manifest_config=f"{work / 'sig-config.json'}:{ARTIFACT_TYPE_SIGNATURE}",
        manifest_annotations=sig_annotations,
        subject=subject,
        disable_path_validation=True,
        quiet=True,
    )
    assert resp.status_code == 201, (resp.status_code, resp.text)
    # OCI distribution 1.1: a registry that processes `subject` MUST answer with OCI-Subject.
    assert resp.headers.get("OCI-Subject") == subject_digest, dict(resp.headers)
    signature_digest = resp.headers["Docker-Content-Digest"]

    # 3. A referrer with an explicit artifactType and the empty config descriptor.
    client.artifact_type = ARTIFACT_TYPE_SBOM
    sbom_annotations = {"org.trustyard.e2e.kind": "sbom"}
    resp = client.push(
        target=f"{host}/{name}:sbom",
        files=[f"{work / 'sbom.spdx.json'}:application/spdx+json"],
        manifest_config=f"{work / 'no-such-config'}:{EMPTY_CONFIG}",
        manifest_annotations=sbom_annotations,
        subject=subject,
        disable_path_validation=True,
        quiet=True,
    )
    client.artifact_type = None
    assert resp.status_code == 201, (resp.status_code, resp.text)
    assert resp.headers.get("OCI-Subject") == subject_digest, dict(resp.headers)
    sbom_digest = resp.headers["Docker-Content-Digest"]
    sbom_manifest = get_manifest(module_registry, name, sbom_digest)
    assert sbom_manifest.status == 200
    sbom_doc = json.loads(sbom_manifest.body)
    assert sbom_doc["artifactType"] == ARTIFACT_TYPE_SBOM
    assert sbom_doc["config"]["digest"] == EMPTY_JSON_DIGEST
    assert sbom_doc["subject"]["digest"] == subject_digest

    assert {"v1", "signature", "sbom"} <= set(list_tags(module_registry, name))

    # 4. The referrers API lists both, with the fields the spec asks for.
    _, listed = referrers(module_registry, name, subject_digest)
    by_digest = {entry["digest"]: entry for entry in listed}
    assert set(by_digest) == {signature_digest, sbom_digest}, listed
    sig_entry = by_digest[signature_digest]
    assert sig_entry["mediaType"] == OCI_MANIFEST
    assert sig_entry["artifactType"] == ARTIFACT_TYPE_SIGNATURE
    assert sig_entry["annotations"] == sig_annotations
    sig_manifest = get_manifest(module_registry, name, signature_digest)
    assert sig_entry["size"] == len(sig_manifest.body)
    sbom_entry = by_digest[sbom_digest]
    assert sbom_entry["mediaType"] == OCI_MANIFEST
    assert sbom_entry["artifactType"] == ARTIFACT_TYPE_SBOM
    assert sbom_entry["annotations"] == sbom_annotations
    assert sbom_entry["size"] == len(sbom_manifest.body)

    # 5. Filtering by artifactType is optional, but when applied it must be announced.
    resp_filtered, filtered = referrers(
        module_registry, name, subject_digest, f"?artifactType={quote(ARTIFACT_TYPE_SBOM, safe='')}"
    )
    applied = resp_filtered.headers.get("oci-filters-applied", "")
    if "artifactType" in applied:
        assert [entry["digest"] for entry in filtered] == [sbom_digest]
    else:
        assert {entry["digest"] for entry in filtered} == {signature_digest, sbom_digest}

    # The referrers are not referrers of each other, and a foreign digest has none.
    _, none = referrers(module_registry, name, signature_digest)
    assert none == []
    _, unknown = referrers(module_registry, name, sha256_digest(b"nothing points here"))
    assert unknown == []

    # 6. oras pull gets the files back, byte for byte.
    out = e2e_tmp / "oras-pull"
    pulled = client.pull(target=f"{host}/{name}:v1", outdir=str(out))
    assert [Path(p).name for p in pulled] == ["report.txt"]
    assert (out / "report.txt").read_bytes() == REPORT
    pulled = client.pull(target=f"{host}/{name}@{sbom_digest}", outdir=str(out))
    assert (out / "sbom.spdx.json").read_bytes() == SBOM
    pulled_manifest = client.get_manifest(f"{host}/{name}:signature")
    assert pulled_manifest["subject"]["digest"] == subject_digest

    # Deleting a referrer removes it from the subject's referrers.
    deleted = http("DELETE", f"{module_registry.url}/v2/{name}/manifests/{signature_digest}")
    assert deleted.status == 202, (deleted.status, deleted.body)
    _, after = referrers(module_registry, name, subject_digest)
    assert [entry["digest"] for entry in after] == [sbom_digest]
