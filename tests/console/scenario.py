"""Real data for the console's browser test and the API fuzzing: images copied in with skopeo
from OCI layouts, a cosign signature pushed through the OCI API, a Trivy report posted to the
scanner webhook, pulls allowed and refused, and a garbage collection run."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from policies.signatures import simple_signing
from tests.e2e.conftest import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    ContainersConfig,
    OciImage,
    OciLayout,
    gzip_bytes,
    make_rootfs_tar,
    run,
    sha256_digest,
)
from tests.server_process import RegistryProcess
from tests.signing import public_pem, sign, simple_signing_payload

TRIVY = Path(__file__).parents[1] / "scans" / "fixtures" / "trivy-alpine-39-high-critical.json"
SCANNER_TOKEN = "console-e2e-scanner-token-0123"

POLICY = """\
version: 1
library:
  namespace: library
  images:
    - name: base
      tags: ["1"]
trust:
  keys:
    release: {pem_file: release.pub}
rules:
  - name: prod is signed by release
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      signature: {any_of: [release]}
  - name: no criticals in prod
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      vulnerabilities:
        max: {critical: 0}
        require_scan: true
        exceptions:
          - {id: CVE-2019-14697, until: 2999-01-31, reason: "musl on x87 only; SEC-42"}
"""


@dataclass
class Http:
    """urllib against the registry, optionally with TLS (its CA) and Basic credentials."""

    base: str
    cafile: Path | None = None
    auth: tuple[str, str] | None = None

    def __call__(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        sent = dict(headers or {})
        if self.auth is not None:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            sent.setdefault("Authorization", f"Basic {token}")
        context = ssl.create_default_context(cafile=str(self.cafile)) if self.cafile else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers.items()), err.read()


def image_with_layers(layout: OciLayout, layers: Sequence[bytes], arch: str = "amd64") -> OciImage:
    """An image of several layers (uncompressed tars given; stored gzip-compressed)."""
    blobs = [gzip_bytes(tar) for tar in layers]
    digests = [layout.add_blob(blob) for blob in blobs]
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(t) for t in layers]},
            "history": [{"created_by": "trustyard console test"} for _ in layers],
        },
        sort_keys=True,
    ).encode()
    config_digest = layout.add_blob(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER_GZIP, "digest": d, "size": len(b)}
                for d, b in zip(digests, blobs, strict=True)
            ],
        },
        sort_keys=True,
    ).encode()
    digest = layout.add_blob(manifest)
    return OciImage(manifest, digest, config_digest, digests, {"architecture": arch, "os": "linux"})


@dataclass
class Scenario:
    """What was pushed, by digest."""

    digests: dict[str, str] = field(default_factory=dict)


def skopeo_copy(
    config: ContainersConfig, layout: Path, ref: str, dest: str, extra: Sequence[str]
) -> None:
    """`skopeo copy oci:<layout>:<ref> docker://<dest>`."""
    run(
        ["skopeo", "--policy", str(config.policy), "copy", *extra, f"oci:{layout}:{ref}", dest],
        env=config.env,
    )


def push_signature(http: Http, name: str, digest: str, key: ec.EllipticCurvePrivateKey) -> None:
    """A cosign `.sig` manifest for `digest`, pushed through the OCI API as cosign does."""
    payload = simple_signing_payload(name, digest)
    signature = sign(key, payload)
    config = json.dumps(
        {"architecture": "", "os": "", "rootfs": {"type": "layers", "diff_ids": []}, "config": {}}
    ).encode()
    for blob in (config, payload):
        status, _, body = http(
            "POST", f"/v2/{name}/blobs/uploads/?digest={sha256_digest(blob)}", data=blob
        )
        assert status == 201, body
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [
            {
                "mediaType": simple_signing.SIMPLE_SIGNING,
                "digest": sha256_digest(payload),
                "size": len(payload),
                "annotations": {
                    simple_signing.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()
                },
            }
        ],
    }
    tag = digest.replace(":", "-") + ".sig"
    status, _, body = http(
        "PUT",
        f"/v2/{name}/manifests/{tag}",
        data=json.dumps(manifest).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert status == 201, body


def write_policy(folder: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    """The policy file and the release key's public half beside it."""
    (folder / "release.pub").write_bytes(public_pem(key))
    path = folder / "policy.yaml"
    path.write_text(POLICY)
    return path


def populate(
    registry: RegistryProcess,
    http: Http,
    containers: ContainersConfig,
    work: Path,
    key: ec.EllipticCurvePrivateKey,
    skopeo_args: Sequence[str],
    puller: Http,
) -> Scenario:
    """Push, sign, scan and pull the console's example content (`http` pushes; `puller` pulls
    as a deployer, who is no producer and so is refused quarantined images)."""
    scenario = Scenario()
    layout = OciLayout(work / "layout")
    base_v1 = make_rootfs_tar({"etc/os-release": b"ID=base\nVERSION=1.0\n"})
    base_v2 = make_rootfs_tar({"etc/os-release": b"ID=base\nVERSION=1.1 (patched)\n"})
    app = make_rootfs_tar({"srv/app.txt": b"web app\n"})
    images = {
        "base-v1": image_with_layers(layout, [base_v1]),
        "web": image_with_layers(layout, [base_v1, app]),
        "base-v2": image_with_layers(layout, [base_v2]),
        "api": image_with_layers(layout, [base_v2, make_rootfs_tar({"srv/api": b"api\n" * 4000})]),
        "worker": image_with_layers(layout, [make_rootfs_tar({"srv/worker": b"work\n"})]),
        "multi-amd64": image_with_layers(layout, [make_rootfs_tar({"bin/x": b"x86\n"})]),
        "multi-arm64": image_with_layers(
            layout, [make_rootfs_tar({"bin/x": b"arm\n"})], arch="arm64"
        ),
    }
    for ref, image in images.items():
        layout.tag(ref, OCI_MANIFEST, image.manifest_digest, len(image.manifest))
        scenario.digests[ref] = image.manifest_digest
    index, index_digest = layout.add_index([images["multi-amd64"], images["multi-arm64"]])
    layout.tag("multi", "application/vnd.oci.image.index.v1+json", index_digest, len(index))
    scenario.digests["multi"] = index_digest
    host = registry.host
    for ref, dest in (
        ("base-v1", "library/base:1"),
        ("web", "apps/web:1"),
        ("base-v2", "library/base:1"),  # the library tag moves on: apps/web:1 is now stale
        ("api", "prod/api:1.0"),
        ("worker", "prod/worker:2.0"),
        ("multi", "prod/multi:3.0"),
    ):
        extra = [*skopeo_args, "--all"] if ref == "multi" else list(skopeo_args)
        skopeo_copy(containers, layout.root, ref, f"docker://{host}/{dest}", extra)
    push_signature(http, "prod/api", scenario.digests["api"], key)
    status, _, body = http(
        "POST",
        f"/api/v1/scans?digest={scenario.digests['api']}&scanner_version=0.57.0",
        data=TRIVY.read_bytes(),
        headers={"Authorization": f"Bearer {SCANNER_TOKEN}"},
    )
    assert status == 201, body
    accept = {"Accept": OCI_MANIFEST}
    assert puller("GET", "/v2/prod/api/manifests/1.0", headers=accept)[0] == 200
    assert puller("GET", "/v2/prod/worker/manifests/2.0", headers=accept)[0] == 403
    assert puller("GET", "/v2/apps/web/manifests/1", headers=accept)[0] == 200
    subprocess.run(
        [sys.executable, "-m", "registry", "gc", "--data-dir", str(registry.data_dir)],
        check=True,
        capture_output=True,
        env=registry.command_env(),
    )
    return scenario
