"""docker push / rmi / pull through Trustyard with blobs in S3 (a real SeaweedFS on loopback).

Once with `redirect: false` (Trustyard streams blobs from S3) and once with `redirect: true`
(blob GETs answer 307 to a presigned SeaweedFS URL on 127.0.0.1, which dockerd follows). The
image has a layer larger than the 8 MiB part size, so its upload streams parts into the multipart
upload of a data object and the blob's key becomes a pointer to it; the small config and second
layer take the PutObject path (the bytes under the blob's key).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    PUSH_DIGEST,
    ContainersConfig,
    DockerDaemon,
    OciLayout,
    get_manifest,
    gzip_bytes,
    make_rootfs_tar,
    repo_digests,
    require_binary,
    run,
    sha256_digest,
)
from tests.server_process import RegistryProcess, start_registry
from tests.storage.s3_server import (
    ACCESS_KEY,
    SECRET_KEY,
    SeaweedS3,
)

pytestmark = pytest.mark.e2e

BUCKET = "trustyard-e2e"
PART_SIZE = 8 * 1024 * 1024
MIB = 1024 * 1024
BLOB_KEY = re.compile(r"^(?P<prefix>.*)blobs/sha256/(?P<xx>[0-9a-f]{2})/(?P<hex>[0-9a-f]{64})$")


@dataclass
class S3Registry:
    registry: RegistryProcess
    prefix: str
    redirect: bool


@pytest.fixture(params=[False, True], ids=["redirect-off", "redirect-on"])
def s3_registry(
    request: pytest.FixtureRequest, seaweed: SeaweedS3, tmp_path: Path
) -> Iterator[S3Registry]:
    """Trustyard with `storage.backend: s3`, its own prefix in the shared bucket."""
    redirect = bool(request.param)
    prefix = f"e2e-{'redirect' if redirect else 'stream'}-{os.urandom(4).hex()}"
    config = {
        "access_log": True,
        "storage": {
            "backend": "s3",
            "s3": {
                "endpoint_url": seaweed.endpoint,
                "bucket": BUCKET,
                "prefix": prefix,
                "region": "us-east-1",
                "addressing_style": "path",
                "redirect": redirect,
                "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY,
                "part_size": PART_SIZE,
                "connect_timeout": "2s",
                "read_timeout": "30s",
            },
        },
    }
    config_path = tmp_path / "trustyard.yaml"
    config_path.write_text(yaml.safe_dump(config))
    registry = start_registry(tmp_path / "data", extra_args=["--config", str(config_path)])
    try:
        yield S3Registry(registry, prefix, redirect)
    finally:
        registry.stop()


def bucket_keys(seaweed: SeaweedS3, prefix: str) -> dict[str, int]:
    """Every key (and its size) under `prefix` in the test bucket, listed page by page."""
    client: Any = seaweed.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


def get_no_redirect(url: str) -> tuple[int, dict[str, str]]:
    """GET `url` without following a redirect; the status and the headers."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def test_docker_push_pull_with_s3(
    dockerd: DockerDaemon, seaweed: SeaweedS3, s3_registry: S3Registry, tmp_path: Path
) -> None:
    registry, prefix = s3_registry.registry, s3_registry.prefix
    repo = "e2e/s3"
    ref = f"{registry.host}/{repo}:v1"
    base_ref = f"{registry.host}/{repo}-base:v1"
    files = {
        "data/big.bin": os.urandom(17 * MIB),  # one layer > 2 parts: segments + tail
        "data/small.bin": os.urandom(300 * 1024),
        "etc/s3-e2e": b"trustyard s3 e2e\n",
    }
    added = os.urandom(3 * MIB)  # a second layer, smaller than one part

    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(make_rootfs_tar(files))
    dockerd.docker("import", str(tarball), base_ref)
    context = tmp_path / "context"
    context.mkdir()
    (context / "added.bin").write_bytes(added)
    (context / "Dockerfile").write_text(f"FROM {base_ref}\nCOPY added.bin /data/added.bin\n")
    dockerd.docker("build", "--tag", ref, str(context), timeout=300)

    out = dockerd.docker("push", ref, timeout=300).stdout
    match = PUSH_DIGEST.search(out)
    assert match is not None, f"no digest line in docker push output:\n{out}"
    digest = match.group(2)
    resp = get_manifest(registry, repo, "v1")
    assert resp.status == 200, resp
    assert resp.headers.get("docker-content-digest") == digest
    assert sha256_digest(resp.body) == digest
    manifest = json.loads(resp.body)
    layers = {str(layer["digest"]): int(layer["size"]) for layer in manifest["layers"]}
    blobs = {str(manifest["config"]["digest"]): int(manifest["config"]["size"]), **layers}
    assert len(layers) == 2
    assert max(layers.values()) > 2 * PART_SIZE  # the big layer took 3 parts

    # The bucket holds exactly the pushed blobs, under <prefix>/blobs/sha256/<xx>/<hex>: the
    # small ones with their bytes, the big layer as an empty pointer naming its data object
    # under _data/ (its only other key); nothing under _uploads/, no multipart upload left.
    keys = bucket_keys(seaweed, f"{prefix}/blobs/")
    expected = {
        f"{prefix}/blobs/sha256/{d[7:9]}/{d[7:]}": 0 if size >= PART_SIZE else size
        for d, size in blobs.items()
    }
    assert keys == expected, keys
    for key in keys:
        found = BLOB_KEY.match(key)
        assert found is not None and found["prefix"] == f"{prefix}/", key
        assert found["xx"] == found["hex"][:2]
    client: Any = seaweed.client()
    data_objects = bucket_keys(seaweed, f"{prefix}/_data/")
    big = max(layers, key=layers.__getitem__)
    pointer = client.head_object(Bucket=BUCKET, Key=f"{prefix}/blobs/sha256/{big[7:9]}/{big[7:]}")
    data_key = f"{prefix}/{pointer['Metadata']['trustyard-data']}"
    assert data_objects == {data_key: layers[big]}, data_objects
    assert set(bucket_keys(seaweed, f"{prefix}/")) == set(keys) | {data_key}
    uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}/")
    assert uploads.get("Uploads", []) == []
    assert not (registry.data_dir / "blobs").exists() or not any(
        (registry.data_dir / "blobs").rglob("*")
    ), "the S3 backend wrote blobs to the local data directory"

    # With redirect, a blob GET answers 307 to a presigned URL of the data object on the same
    # SeaweedFS.
    status, headers = get_no_redirect(f"{registry.url}/v2/{repo}/blobs/{big}")
    if s3_registry.redirect:
        assert status == 307, (status, headers)
        location = urllib.parse.urlsplit(headers["location"])
        assert f"{location.scheme}://{location.netloc}" == seaweed.endpoint, headers["location"]
        assert location.path == f"/{BUCKET}/{data_key}"
        assert "X-Amz-Signature" in location.query
    else:
        assert status == 200, (status, headers)

    # Nothing of the image stays local: the pull must bring every layer from the registry.
    for name in (ref, base_ref):
        dockerd.docker("rmi", "--force", name, check=False)
    for name in (ref, base_ref):
        assert dockerd.docker("image", "inspect", name, check=False).returncode != 0
    dockerd.docker("pull", ref, timeout=300)
    assert f"{registry.host}/{repo}@{digest}" in repo_digests(dockerd, ref)

    blob_gets = re.findall(
        rf'"GET /v2/{re.escape(repo)}/blobs/(sha256:[0-9a-f]{{64}}) HTTP/1\.1" (\d{{3}})',
        registry.log(),
    )
    pulled = {d: status for d, status in blob_gets}
    assert set(layers) <= set(pulled), (layers, blob_gets)
    want = "307" if s3_registry.redirect else "200"
    assert all(pulled[d] == want for d in layers), blob_gets

    container = dockerd.docker("create", ref, "/does-not-run").stdout.strip()
    try:
        out_dir = tmp_path / "cp"
        out_dir.mkdir()
        for path in (*files, "data/added.bin"):
            target = out_dir / path.replace("/", "_")
            dockerd.docker("cp", f"{container}:/{path}", str(target))
            assert target.read_bytes() == files.get(path, added), path
    finally:
        dockerd.docker("rm", "--force", container, check=False)
        dockerd.docker("rmi", "--force", ref, check=False)


def test_skopeo_copy_multi_layer_image_to_s3(
    containers_config: ContainersConfig, seaweed: SeaweedS3, s3_registry: S3Registry, tmp_path: Path
) -> None:
    """skopeo (one streamed PATCH per blob, then PUT ?digest=) pushes three layers — two larger
    than a part, one smaller — and copies the image back byte for byte."""
    skopeo = require_binary("skopeo")
    registry, prefix = s3_registry.registry, s3_registry.prefix
    src = tmp_path / "src"
    layout = OciLayout(src)
    tars = [
        make_rootfs_tar({f"data/{name}": os.urandom(size)})
        for name, size in (("big", 19 * MIB), ("medium", PART_SIZE + 5), ("small", 40 * 1024))
    ]
    layers = [gzip_bytes(tar) for tar in tars]
    layer_digests = [layout.add_blob(layer) for layer in layers]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar) for tar in tars]},
        }
    ).encode()
    config_digest = layout.add_blob(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [
                {"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": len(layer)}
                for digest, layer in zip(layer_digests, layers, strict=True)
            ],
        }
    ).encode()
    manifest_digest = layout.add_blob(manifest)
    layout.tag("1.0", OCI_MANIFEST, manifest_digest, len(manifest))

    def run_skopeo(*args: str) -> str:
        command = [skopeo, "--policy", str(containers_config.policy), *args]
        return run(command, env=containers_config.env, timeout=300).stdout

    dest = f"docker://{registry.host}/e2e/skopeo-s3:1.0"
    run_skopeo("copy", "--dest-tls-verify=false", f"oci:{src}:1.0", dest)
    resp = get_manifest(registry, "e2e/skopeo-s3", "1.0")
    assert resp.status == 200
    assert resp.body == manifest

    # Layers of a part or more are pointers to their data objects; the rest are bytes.
    client: Any = seaweed.client()
    for digest, layer in zip(layer_digests, layers, strict=True):
        key = f"{prefix}/blobs/sha256/{digest[7:9]}/{digest[7:]}"
        head = client.head_object(Bucket=BUCKET, Key=key)
        if len(layer) >= PART_SIZE:
            assert head["ContentLength"] == 0
            data_key = f"{prefix}/{head['Metadata']['trustyard-data']}"
            assert client.head_object(Bucket=BUCKET, Key=data_key)["ContentLength"] == len(layer)
        else:
            assert head["ContentLength"] == len(layer)
    assert bucket_keys(seaweed, f"{prefix}/_uploads/") == {}
    assert (
        client.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}/").get("Uploads", []) == []
    )

    back = tmp_path / "back"
    run_skopeo("copy", "--src-tls-verify=false", dest, f"oci:{back}:out")
    for digest, layer in zip(layer_digests, layers, strict=True):
        assert (back / "blobs" / "sha256" / digest[7:]).read_bytes() == layer
