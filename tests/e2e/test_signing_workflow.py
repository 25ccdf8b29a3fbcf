"""The publishing workflow with auth on, end to end: the CI robot pushes with skopeo, signs BY TAG
right after the push (the image is quarantined then: only producers may read it), and a deployer
with pull only is refused before the signature and served after.

Two signers: sigstore-js from npm (`sigstore attest` an in-toto SLSA provenance statement, then
`sigstore attach` by tag), against @sigstore/mock's Fulcio, Rekor and timestamp authority served
offline by `tests/e2e/npm/sigstore-instance.js`; and a keyed cosign `.sig`, made as cosign makes
it (HEAD the tag, GET the manifest, push the signature), with `cryptography` (cosign itself is not
installable here). A signature by another identity or key does not count.
"""

from __future__ import annotations

import base64
import json
import selectors
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from registry.auth.users import UserStore
from tests.e2e.conftest import (
    OCI_MANIFEST,
    ContainersConfig,
    OciLayout,
    Response,
    http,
    require_binary,
    run,
)
from tests.oci import OCI_CONFIG, descriptor, sha256
from tests.server_process import RegistryProcess, start_registry
from tests.signing import public_pem, sign, simple_signing_payload

pytestmark = pytest.mark.e2e

NPM = Path(__file__).parent / "npm"
ISSUER = "https://ci.example"
RELEASE = "https://ci.example/acme/app/.github/workflows/release.yml@refs/heads/main"
INTRUDER = "https://ci.example/acme/fork/.github/workflows/release.yml@refs/heads/main"
SLSA = "https://slsa.dev/provenance/v1"
DEPLOY_PASSWORD = "deploy-e2e-password"
OLGA_PASSWORD = "olga-e2e-password"
PERMISSIONS = [
    {"namespace": "prod/**", "groups": {"ci": "push", "deployers": "pull"}},
    {"namespace": "**", "groups": {"ops": "admin"}},
]
POLICY = f"""
version: 1
trust:
  keys:
    release-key: {{pem_file: release.pub}}
  identities:
    ci-release:
      issuer: {ISSUER}
      subject: {RELEASE}
      trusted_root: mock_trusted_root.json
rules:
  - name: attested by the release workflow
    match: {{repositories: [prod/app], on: [pull]}}
    require:
      signature: {{any_of: [ci-release], predicate_type: "{SLSA}"}}
  - name: signed with the release key
    match: {{repositories: [prod/keyed], on: [pull]}}
    require:
      signature: {{any_of: [release-key]}}
"""


@dataclass
class Setup:
    """The registry (auth on, the policy above), the accounts and the Sigstore instance."""

    registry: RegistryProcess
    robot: str  # "ci:<token>", skopeo's --creds form
    robot_token: str
    deployer: str
    sigstore_url: str
    release_key: ec.EllipticCurvePrivateKey
    work: Path


def _sigstore_cli() -> Path:
    binary = NPM / "node_modules" / ".bin" / "sigstore"
    if not binary.exists():
        pytest.skip("sigstore-js is not installed (run .ci/install-npm-deps.sh)")
    return binary


def _start_sigstore_instance(root: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the offline Sigstore instance; return it and its base URL once it listens."""
    node = require_binary("node")
    with log.open("wb") as errors:
        process = subprocess.Popen(
            [node, str(NPM / "sigstore-instance.js"), str(root)],
            cwd=NPM,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    ready = selector.select(timeout=60)
    line = process.stdout.readline().decode() if ready else ""
    if not line.startswith("listening "):
        process.kill()
        process.wait()
        pytest.fail(f"the Sigstore instance did not start: {line!r} {log.read_text()}")
    return process, line.split()[1]


@pytest.fixture(scope="module")
def setup(e2e_tmp: Path) -> Iterator[Setup]:
    _sigstore_cli()
    base = e2e_tmp / "signing-workflow"
    folder = base / "policy"
    folder.mkdir(parents=True)
    instance, url = _start_sigstore_instance(
        folder / "mock_trusted_root.json", base / "sigstore-instance.log"
    )
    try:
        release_key = ec.generate_private_key(ec.SECP256R1())
        (folder / "release.pub").write_bytes(public_pem(release_key))
        (folder / "policy.yaml").write_text(POLICY)
        data_dir = base / "data"
        store = UserStore(data_dir / "auth" / "users.yaml")
        store.add_user("deploy", DEPLOY_PASSWORD, ["deployers"], replace=False)
        store.add_user("olga", OLGA_PASSWORD, ["ops"], replace=False)
        token = store.add_robot("ci", ["ci"], replace=False)
        config = base / "trustyard.yaml"
        config.write_text(
            yaml.safe_dump({"auth": {"service": "trustyard-e2e", "permissions": PERMISSIONS}})
        )
        registry = start_registry(
            data_dir,
            extra_args=["--config", str(config), "--policy", str(folder / "policy.yaml")],
        )
        try:
            yield Setup(
                registry, f"ci:{token}", token, f"deploy:{DEPLOY_PASSWORD}", url, release_key, base
            )
        finally:
            registry.stop()
    finally:
        instance.kill()
        instance.wait()


def _skopeo(config: ContainersConfig, *args: str, check: bool = True) -> str:
    binary = require_binary("skopeo")
    proc = run([binary, "--policy", str(config.policy), *args], env=config.env, check=check)
    return proc.stdout + proc.stderr


def _push(config: ContainersConfig, s: Setup, name: str, text: bytes) -> str:
    """The CI robot pushes a fresh image by tag 1.0 with skopeo; its manifest digest."""
    layout = OciLayout(s.work / f"src-{name.replace('/', '-')}")
    image = layout.add_image({"etc/release.txt": text})
    layout.tag("1.0", OCI_MANIFEST, image.manifest_digest, len(image.manifest))
    digest_file = s.work / f"{name.replace('/', '-')}.digest"
    _skopeo(
        config,
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        s.robot,
        "--digestfile",
        str(digest_file),
        f"oci:{layout.root}:1.0",
        f"docker://{s.registry.host}/{name}:1.0",
    )
    digest = digest_file.read_text().strip()
    assert digest == image.manifest_digest
    return digest


def _deploy(config: ContainersConfig, s: Setup, name: str, attempt: str) -> tuple[bool, str]:
    """The deployer copies the image out with skopeo: whether it worked, and what it said."""
    dest = s.work / f"deployed-{name.replace('/', '-')}-{attempt}"
    out = _skopeo(
        config,
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        s.deployer,
        f"docker://{s.registry.host}/{name}:1.0",
        f"oci:{dest}:1.0",
        check=False,
    )
    # skopeo quotes the registry's message inside its own: unescape the inner quotes.
    return (dest / "index.json").exists(), out.replace('\\"', '"')


def _identity_token(subject: str) -> str:
    """An OIDC token as a CI system hands it out (the mock Fulcio reads it, unsigned)."""

    def part(document: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"iss": ISSUER, "sub": subject, "aud": "sigstore", "iat": now, "exp": now + 600}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def _attest_and_attach(s: Setup, name: str, digest: str, subject: str, label: str) -> str:
    """`sigstore attest` a SLSA provenance statement for the image, then `sigstore attach` the
    bundle BY TAG as the CI robot; the bundle's JSON."""
    cli = str(_sigstore_cli())
    statement = s.work / f"{label}.statement.json"
    statement.write_text(
        json.dumps(
            {
                "_type": "https://in-toto.io/Statement/v1",
                "subject": [
                    {"name": f"{s.registry.host}/{name}", "digest": {"sha256": digest[7:]}}
                ],
                "predicateType": SLSA,
                "predicate": {
                    "buildDefinition": {"buildType": "https://ci.example/build/v1"},
                    "runDetails": {"builder": {"id": "https://ci.example/runner"}},
                },
            }
        )
    )
    bundle = s.work / f"{label}.sigstore.json"
    env = {"CI": "true", "SIGSTORE_ID_TOKEN": _identity_token(subject)}
    run(
        [
            cli,
            "attest",
            str(statement),
            "--fulcio-url",
            s.sigstore_url,
            "--rekor-url",
            s.sigstore_url,
            "--tsa-server-url",
            s.sigstore_url,
            "--output-file",
            str(bundle),
        ],
        env=env,
        cwd=NPM,
    )
    attached = run(
        [
            cli,
            "attach",
            "--attestation",
            str(bundle),
            "--username",
            "ci",
            "--password",
            s.robot_token,
            f"{s.registry.host}/{name}:1.0",
        ],
        cwd=NPM,
    )
    assert "Artifact attached to image" in attached.stderr, attached.stderr
    return bundle.read_text()


def test_sigstore_js_attest_and_attach_by_tag_right_after_the_push(
    setup: Setup, containers_config: ContainersConfig
) -> None:
    name = "prod/app"
    digest = _push(containers_config, setup, name, b"app release 1.0\n")
    deployed, said = _deploy(containers_config, setup, name, "before")
    assert not deployed
    assert 'rule "attested by the release workflow"' in said, said

    # An attestation by another workflow is attached, but counts for nothing.
    intruder = json.loads(_attest_and_attach(setup, name, digest, INTRUDER, "intruder"))
    entry = intruder["verificationMaterial"]["tlogEntries"][0]
    assert entry["kindVersion"] == {"kind": "intoto", "version": "0.0.2"}
    assert intruder["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"]
    deployed, said = _deploy(containers_config, setup, name, "intruder")
    assert not deployed
    assert f"by an unknown identity ({INTRUDER} from {ISSUER})" in said, said

    # The release workflow's attestation, attached by tag: the deployer is served.
    _attest_and_attach(setup, name, digest, RELEASE, "release")
    deployed, said = _deploy(containers_config, setup, name, "after")
    assert deployed, said

    decisions = _decisions(setup, name)
    reads = [d for d in decisions if d["identity"] == "ci" and d["action"] == "pull"]
    assert reads and all(d["outcome"] == "allow" for d in reads)
    assert all(
        d["reason"].startswith(f"quarantined; read by a producer of {name} (") for d in reads
    )
    refused = [d for d in decisions if d["identity"] == "deploy" and d["outcome"] == "deny"]
    assert len(refused) >= 2


# --------------------------------------------------------------------------- cosign, keyed


class CosignLike:
    """Signs an image by tag the way `cosign sign --key` does over HTTP: HEAD the tag for its
    digest, GET the manifest, then upload the simple-signing payload and push the `.sig`
    manifest under `sha256-<hex>.sig` (all as the CI robot, basic auth)."""

    def __init__(self, s: Setup) -> None:
        self.base = s.registry.url
        self.host = s.registry.host
        creds = base64.b64encode(f"ci:{s.robot_token}".encode()).decode()
        self.auth = {"Authorization": f"Basic {creds}"}

    def request(
        self, method: str, path: str, data: bytes | None = None, **headers: str
    ) -> Response:
        return http(method, self.base + path, headers={**self.auth, **headers}, data=data)

    def sign(self, name: str, tag: str, key: ec.EllipticCurvePrivateKey) -> str:
        accept = {"Accept": OCI_MANIFEST}
        head = self.request("HEAD", f"/v2/{name}/manifests/{tag}", **accept)
        assert head.status == 200, head
        digest = head.headers["docker-content-digest"]
        got = self.request("GET", f"/v2/{name}/manifests/{digest}", **accept)
        assert got.status == 200 and sha256(got.body) == digest
        payload = simple_signing_payload(f"{self.host}/{name}", digest)
        signature = sign(key, payload)
        config = json.dumps(
            {"architecture": "", "os": "", "rootfs": {"type": "layers", "diff_ids": []}}
        ).encode()
        for blob in (config, payload):
            put = self.request("POST", f"/v2/{name}/blobs/uploads/?digest={sha256(blob)}", blob)
            assert put.status == 201, put
        layer = descriptor(
            "application/vnd.dev.cosign.simplesigning.v1+json",
            payload,
            annotations={
                "dev.cosignproject.cosign/signature": base64.b64encode(signature).decode()
            },
        )
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor(OCI_CONFIG, config),
                "layers": [layer],
            }
        ).encode()
        pushed = self.request(
            "PUT",
            f"/v2/{name}/manifests/{digest.replace(':', '-')}.sig",
            manifest,
            **{"Content-Type": OCI_MANIFEST},
        )
        assert pushed.status == 201, pushed
        return digest


def test_a_keyed_cosign_signature_made_by_tag_right_after_the_push(
    setup: Setup, containers_config: ContainersConfig
) -> None:
    name = "prod/keyed"
    digest = _push(containers_config, setup, name, b"keyed release 1.0\n")
    assert not _deploy(containers_config, setup, name, "before")[0]
    cosign = CosignLike(setup)

    # Signed by another key: still refused, and the denial says what was found.
    assert cosign.sign(name, "1.0", ec.generate_private_key(ec.SECP256R1())) == digest
    deployed, said = _deploy(containers_config, setup, name, "other-key")
    assert not deployed
    assert 'rule "signed with the release key"' in said and "unknown key" in said, said

    assert cosign.sign(name, "1.0", setup.release_key) == digest
    deployed, said = _deploy(containers_config, setup, name, "after")
    assert deployed, said


def test_the_deployer_may_not_read_a_quarantined_image_by_any_route(
    setup: Setup, containers_config: ContainersConfig
) -> None:
    """HEAD and GET by tag and by digest are refused to the pull-only deployer while the robot
    reads them; the deployer's answer names the rule."""
    name = "prod/app"
    digest = _push(containers_config, setup, name, b"app release 1.1, unsigned\n")
    creds = base64.b64encode(f"deploy:{DEPLOY_PASSWORD}".encode()).decode()
    robot = CosignLike(setup)
    for reference in ("1.0", digest):
        for method in ("HEAD", "GET"):
            path = f"/v2/{name}/manifests/{reference}"
            denied = http(
                method, setup.registry.url + path, headers={"Authorization": f"Basic {creds}"}
            )
            assert denied.status == 403, (method, reference)
            assert robot.request(method, path).status == 200


def _decisions(s: Setup, name: str) -> list[dict[str, str]]:
    """The decision log for `name`, read by an administrator once the robot's folded reads are
    written (within a second: wait for them)."""
    creds = base64.b64encode(f"olga:{OLGA_PASSWORD}".encode()).decode()
    url = f"{s.registry.url}/api/v1/decisions?repository={name}&n=500"
    deadline = time.monotonic() + 60  # only turns a hang into a failure
    while True:
        resp = http("GET", url, headers={"Authorization": f"Basic {creds}"})
        assert resp.status == 200, resp
        document = resp.json()
        assert isinstance(document, dict)
        found: list[dict[str, str]] = document["decisions"]
        if any(d["identity"] == "ci" for d in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
