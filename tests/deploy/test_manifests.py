"""deploy/ as shipped: the Dockerfile, compose files and Kubernetes manifests are consistent
with the server (probes it answers, configuration it accepts, no floating image tags)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from policies.loader import parse_policy
from registry.config import load_config

DEPLOY = Path(__file__).parents[2] / "deploy"


def _documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def test_no_floating_image_tags():
    for path in DEPLOY.rglob("*.yaml"):
        for image in re.findall(r"image:\s*(\S+)", path.read_text()):
            assert ":" in image.split("/")[-1], f"{path}: {image} has no tag"
            assert not image.endswith(":latest"), f"{path}: {image}"


def test_dockerfile_gives_the_data_dir_to_the_runtime_user_before_declaring_the_volume():
    text = (DEPLOY / "Dockerfile").read_text()
    chown = text.index("chown 65532:65532 /var/lib/trustyard")
    assert chown < text.index("VOLUME /var/lib/trustyard") < text.index("USER 65532:65532")
    assert "/readyz" in text


def test_kubernetes_probes_config_and_secret():
    documents = {d["kind"]: d for d in _documents("kubernetes/trustyard.yaml")}
    pod = documents["StatefulSet"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["fsGroup"] == 65532
    assert not container["image"].endswith(":latest")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == "/var/lib/trustyard"
    config_map = documents["ConfigMap"]["data"]
    config = yaml.safe_load(config_map["config.yaml"])
    # The configuration is valid as the server reads it (with the image's listen and data dir).
    loaded = load_config(
        environ={"TRUSTYARD_LISTEN": "0.0.0.0:5000", "TRUSTYARD_DATA_DIR": "/var/lib/trustyard"},
        overrides=config,
    )
    assert loaded.public_url == "https://registry.example.com"
    assert loaded.policy_file == Path(mounts["policy"]) / "policy.yaml"
    assert str(loaded.raw["auth"]["users_file"]).startswith(mounts["secret"])
    assert documents["Secret"]["stringData"].keys() == {"users.yaml", "token-signing-key.pem"}
    assert parse_policy(config_map["policy.yaml"]).rules


def test_compose_files_use_the_probes_and_a_named_volume():
    for name in ("compose.yaml", "compose-s3.yaml"):
        compose = _documents(name)[0]
        service = compose["services"]["trustyard"]
        assert "trustyard-data:/var/lib/trustyard" in service["volumes"]
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        assert "trustyard-data" in compose["volumes"]
