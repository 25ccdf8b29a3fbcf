"""deploy/ for the replicated form: the compose file (PostgreSQL, SeaweedFS, two replicas,
HAProxy), its HAProxy configuration and the Kubernetes Deployment are consistent with the server
and with themselves.

* Every replica's configuration — the shared file plus the environment compose or Kubernetes
  gives it — is accepted by the server's own loader (`registry.config.load_config`, against
  `config_schema.json`), names PostgreSQL and S3, and is the same for every replica.
* The compose file's references resolve: the config file it mounts exists, the hosts and ports
  the configuration names are its services', the balancer sends to every replica.
* `haproxy -c` accepts haproxy.cfg (only the replicas' host names, known inside compose's
  network, are unresolved here), and its health check is the probe the server answers.
* Every manifest under deploy/kubernetes names only ConfigMaps, Secrets and keys it defines, and
  its selectors match its pods. The replicated Deployment keeps no state of its own.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies.loader import parse_policy
from registry.config import Config, load_config

DEPLOY = Path(__file__).parents[2] / "deploy"
#: What the image sets (deploy/Dockerfile ENV).
IMAGE_ENV = {"TRUSTYARD_LISTEN": "0.0.0.0:5000", "TRUSTYARD_DATA_DIR": "/var/lib/trustyard"}


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose-ha.yaml").read_text())


def _expand(value: str) -> str:
    """Compose's `${NAME:-default}` interpolation, with nothing set: the defaults."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def _replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if name.startswith("trustyard-")}


def _replica_config(service: dict[str, Any]) -> tuple[Config, dict[str, str]]:
    """The configuration a compose replica runs with, loaded as the server loads it."""
    args = service["command"]
    assert args[:2] == ["serve", "--config"], args
    mounts = dict(volume.split(":")[:2] for volume in service["volumes"])
    sources = {target: source for source, target in mounts.items()}
    host_file = DEPLOY / sources[args[2]]
    assert host_file.is_file(), f"{args[2]} is mounted from {host_file}, which does not exist"
    environ = {**IMAGE_ENV, **{k: _expand(str(v)) for k, v in service["environment"].items()}}
    return load_config(host_file, environ=environ), environ


def test_compose_runs_two_replicas_on_postgresql_and_s3_behind_a_balancer() -> None:
    compose = _compose()
    services = compose["services"]
    replicas = _replicas(compose)
    assert len(replicas) >= 2
    configs = {}
    for name, service in replicas.items():
        config, environ = _replica_config(service)
        configs[name] = config.raw
        # PostgreSQL: the compose service, with the database and user it creates.
        url = urllib.parse.urlsplit(config.metadata_url or "")
        assert url.scheme == "postgresql" and url.hostname == "postgres", config.metadata_url
        database = services["postgres"]["environment"]
        assert url.username == database["POSTGRES_USER"]
        assert url.path == "/" + database["POSTGRES_DB"]
        assert url.password == _expand(database["POSTGRES_PASSWORD"])
        # S3: the compose service on the port it serves S3 on.
        store = config.blob_store
        assert store.backend == "s3" and store.s3 is not None
        endpoint = urllib.parse.urlsplit(store.s3.endpoint_url or "")
        assert endpoint.hostname == "s3"
        assert f"-s3.port={endpoint.port}" in services["s3"]["command"]
        assert environ["AWS_ACCESS_KEY_ID"] and environ["AWS_SECRET_ACCESS_KEY"]
        # Ready only when both are: the replica starts after them.
        assert service["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "s3": {"condition": "service_healthy"},
        }
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        # Its own scratch volume: replicas share nothing but PostgreSQL and S3.
        data = [v for v in service["volumes"] if v.endswith(":/var/lib/trustyard")]
        assert len(data) == 1 and data[0].split(":")[0] in compose["volumes"]
    assert len({str(sorted(c.items())) for c in configs.values()}) == 1, "replicas differ"
    data_volumes = [v for s in replicas.values() for v in s["volumes"] if "/var/lib/" in v]
    assert len(set(data_volumes)) == len(replicas), "two replicas share a data volume"

    balancer = services["balancer"]
    assert set(balancer["depends_on"]) == set(replicas)
    assert balancer["ports"] == ["127.0.0.1:5000:5000"]  # loopback: no auth in this example
    assert "./ha/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in balancer["volumes"]
    for name, service in services.items():
        if name != "balancer":
            assert "ports" not in service, f"{name} is reachable around the balancer"


def _haproxy_lines() -> list[list[str]]:
    lines = []
    for raw in (DEPLOY / "ha" / "haproxy.cfg").read_text().splitlines():
        text = raw.split("#", 1)[0].strip()
        if text:
            lines.append(text.split())
    return lines


def test_haproxy_balances_over_every_replica_with_the_readiness_probe() -> None:
    lines = _haproxy_lines()
    servers = {words[1]: words[2] for words in lines if words[0] == "server"}
    assert servers == {name: f"{name}:5000" for name in _replicas(_compose())}
    assert all("check" in words for words in lines if words[0] == "server")
    # Client affinity (an S3 upload changing replica pays a copy), yet every replica serves all.
    assert ["balance", "source"] in lines
    assert ["option", "redispatch", "1"] in lines
    assert ["option", "httpchk", "GET", "/readyz"] in lines
    assert ["http-check", "expect", "status", "200"] in lines
    assert ["bind", ":5000"] in lines


def test_haproxy_accepts_the_configuration() -> None:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        pytest.skip("HAProxy is not installed (bash .ci/install-e2e-deps.sh)")
    checked = subprocess.run(
        [binary, "-c", "-f", str(DEPLOY / "ha" / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = checked.stdout + checked.stderr
    assert checked.returncode == 0, output
    assert "Configuration file is valid" in output
    # The only warnings: the replicas' names resolve inside compose's network, not here.
    for line in output.splitlines():
        if "[WARNING]" in line or "[ALERT]" in line:
            assert "could not resolve address 'trustyard-" in line, line


# -- Kubernetes -----------------------------------------------------------------------------------


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pod_specs(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d["spec"]["template"]
        for d in documents
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
    ]


@pytest.mark.parametrize("path", sorted((DEPLOY / "kubernetes").glob("*.yaml")), ids=str)
def test_manifests_name_only_what_they_define(path: Path) -> None:
    documents = _documents(path)
    defined = {
        (d["kind"], d["metadata"]["name"]): {**d.get("data", {}), **d.get("stringData", {})}
        for d in documents
        if d["kind"] in ("ConfigMap", "Secret")
    }
    templates = _pod_specs(documents)
    assert templates
    for template in templates:
        spec, labels = template["spec"], template["metadata"]["labels"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for volume in volumes.values():
            if "configMap" in volume or "secret" in volume:
                kind = "ConfigMap" if "configMap" in volume else "Secret"
                source = volume.get("configMap") or volume["secret"]
                name = source.get("name") or source.get("secretName")
                assert (kind, name) in defined, f"{kind} {name} is not in {path.name}"
                for item in source.get("items", []):
                    assert item["key"] in defined[(kind, name)], (name, item["key"])
        for container in spec["containers"]:
            for mount in container["volumeMounts"]:
                assert mount["name"] in volumes or mount["name"] in _claims(documents), mount
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in defined[("Secret", ref["name"])], ref
        for document in documents:
            selector = document.get("spec", {}).get("selector")
            if document["kind"] == "Service" and selector:
                assert selector.items() <= labels.items(), document["metadata"]["name"]
            if document["kind"] in ("Deployment", "StatefulSet", "PodDisruptionBudget"):
                match = document["spec"]["selector"]["matchLabels"]
                assert match.items() <= labels.items(), document["metadata"]["name"]


def _claims(documents: list[dict[str, Any]]) -> set[str]:
    return {
        claim["metadata"]["name"]
        for d in documents
        for claim in d.get("spec", {}).get("volumeClaimTemplates", [])
    }


def test_the_replicated_deployment_is_stateless_and_shares_postgresql_s3_and_keys() -> None:
    documents = _documents(DEPLOY / "kubernetes" / "trustyard-replicated.yaml")
    kinds = {d["kind"]: d for d in documents}
    assert "StatefulSet" not in kinds and "PersistentVolumeClaim" not in kinds
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] >= 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["data"]  # scratch only
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}

    secret = kinds["Secret"]["stringData"]
    environ = dict(IMAGE_ENV)
    for variable in container["env"]:
        ref = variable["valueFrom"]["secretKeyRef"]
        environ[variable["name"]] = secret[ref["key"]]
    config_map = kinds["ConfigMap"]["data"]
    loaded = load_config(environ=environ, overrides=yaml.safe_load(config_map["config.yaml"]))
    # Metadata in PostgreSQL, blobs in S3, with credentials from the Secret.
    assert urllib.parse.urlsplit(loaded.metadata_url or "").scheme == "postgresql"
    assert loaded.blob_store.backend == "s3"
    assert environ["AWS_ACCESS_KEY_ID"] and environ["AWS_SECRET_ACCESS_KEY"]
    # The URL carries a password: from the Secret, never in the ConfigMap.
    assert "metadata" not in yaml.safe_load(config_map["config.yaml"])
    # One token signing key and one users file for every replica, from the Secret's mount.
    auth = loaded.raw["auth"]
    secret_mount = mounts["secret"]
    assert auth["token"]["signing_key"] == f"{secret_mount}/token-signing-key.pem"
    assert auth["users_file"] == f"{secret_mount}/users.yaml"
    assert loaded.policy_file == Path(mounts["policy"]) / "policy.yaml"
    assert parse_policy(config_map["policy.yaml"]).rules
    service = next(d for d in documents if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
