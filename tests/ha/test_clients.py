"""docker and skopeo through HAProxy in front of three replicas on PostgreSQL and SeaweedFS.

The balancer sends each request to the next replica, so one push's POST, PATCH and PUT land on
different replicas: every replica must continue what another began, and answer for what another
stored."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    OCI_MANIFEST,
    PUSH_DIGEST,
    ContainersConfig,
    DockerDaemon,
    OciLayout,
    get_manifest,
    http,
    layout_blob_digests,
    layout_ref_digest,
    make_rootfs_tar,
    repo_digests,
    require_binary,
    run,
    sha256_digest,
)
from tests.ha.cluster import Cluster

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


def sessions(cluster: Cluster) -> dict[str, int]:
    """How many requests HAProxy has sent to each replica so far."""
    assert cluster.balancer is not None
    return {name: int(row["stot"]) for name, row in cluster.balancer.servers().items()}


def every_replica_answers(cluster: Cluster, repo: str, tag: str, digest: str) -> None:
    """Each replica, asked directly, resolves the tag to `digest` and serves the manifest."""
    for name, replica in cluster.replicas.items():
        resp = get_manifest(replica, repo, tag)
        assert resp.status == 200, (name, resp.status, resp.body)
        assert resp.headers["docker-content-digest"] == digest, name
        assert sha256_digest(resp.body) == digest, name


def test_docker_push_and_pull_through_the_balancer(
    dockerd: DockerDaemon, cluster: Cluster, e2e_tmp: Path
) -> None:
    # 12 MiB that gzip cannot shrink: the layer spans three 5 MiB parts in S3.
    tarball = e2e_tmp / "ha-layer.tar"
    tarball.write_bytes(make_rootfs_tar({"opt/blob.bin": os.urandom(12 * MIB), "etc/ha": b"ha\n"}))
    ref = f"{cluster.host}/ha/docker:v1"
    dockerd.docker("import", str(tarball), ref)
    before = sessions(cluster)

    out = dockerd.docker("push", ref).stdout
    match = PUSH_DIGEST.search(out)
    assert match is not None, out
    digest = match.group(2)
    # Round robin: every replica served part of that one push.
    after = sessions(cluster)
    assert all(after[name] > before[name] for name in before), (before, after)
    every_replica_answers(cluster, "ha/docker", "v1", digest)
    manifest = json.loads(get_manifest(cluster, "ha/docker", "v1").body)
    for blob in [manifest["config"], *manifest["layers"]]:
        for replica in cluster.replicas.values():
            got = http("GET", f"{replica.url}/v2/ha/docker/blobs/{blob['digest']}")
            assert got.status == 200 and sha256_digest(got.body) == blob["digest"]

    dockerd.docker("rmi", "--force", ref)
    dockerd.docker("pull", ref)
    assert f"{cluster.host}/ha/docker@{digest}" in repo_digests(dockerd, ref)
    dockerd.docker("rmi", "--force", ref)


def test_skopeo_copy_there_and_back_through_the_balancer(
    containers_config: ContainersConfig, cluster: Cluster, e2e_tmp: Path
) -> None:
    skopeo = require_binary("skopeo")

    def call(*args: str) -> str:
        cmd = [skopeo, "--policy", str(containers_config.policy), *args]
        return run(cmd, env=containers_config.env).stdout

    src = e2e_tmp / "ha-skopeo-src"
    layout = OciLayout(src)
    image = layout.add_image({"etc/ha.txt": b"copied through haproxy\n", "bin/x": os.urandom(MIB)})
    layout.tag("1.0", OCI_MANIFEST, image.manifest_digest, len(image.manifest))
    dest = f"docker://{cluster.host}/ha/skopeo:1.0"
    call("copy", "--dest-tls-verify=false", f"oci:{src}:1.0", dest)
    every_replica_answers(cluster, "ha/skopeo", "1.0", image.manifest_digest)

    back = e2e_tmp / "ha-skopeo-back"
    call("copy", "--src-tls-verify=false", dest, f"oci:{back}:out")
    assert layout_ref_digest(back, "out") == image.manifest_digest
    assert layout_blob_digests(back) == layout_blob_digests(src)
    for digest in layout_blob_digests(src):
        name = digest.split(":", 1)[1]
        assert (back / "blobs/sha256" / name).read_bytes() == (
            src / "blobs/sha256" / name
        ).read_bytes()
