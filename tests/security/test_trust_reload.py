"""Trust material changes take effect at once: the policy version covers every key, certificate
and trusted root file the policy references, so replacing one revokes what it vouched for on the
next reload (SIGHUP, or the file watch), a trusted root is never cached past its replacement,
`policy check` refuses a root the verifier could not use, and a proof checked against "now" (a
private CA's certificate, a Notation signature) stops counting when it expires, also from the
decision cache.

An attacker whose key was just revoked, or whose certificate just expired, keeps pulling."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import io
import json
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import time_machine
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from policies.signatures import simple_signing
from registry.context import CONTEXT
from registry.policy_commands import check_policy
from tests.oci import OCI_CONFIG, OCI_MANIFEST, descriptor, push_blob, push_image
from tests.policies.test_signatures_cosign import hashedrekord, rekor_bundle
from tests.policies.test_signatures_notation import make_jws
from tests.security.test_docker_reference import push_notation
from tests.server_process import start_registry
from tests.signing import (
    public_pem,
    pull,
    push_cosign_signature,
    sign,
    simple_signing_payload,
    write_rekor_root,
)

REF = "localhost:5000/prod/app"

POLICY = """\
version: 1
trust:
  keys:
    release: {pem_file: keys/release.pub}
rules:
  - name: prod is signed by release
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      signature: {any_of: [release]}
"""

RULE = 'rule "prod is signed by release": needs a signature by release; found 1 signature, '


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Wait until `check()` holds (polling), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.05)


async def push_simple_signature(
    client: TestClient, digest: str, payload: bytes, annotations: dict[str, str]
) -> None:
    """Push a cosign `.sig` manifest for `digest`: one simple-signing layer (`payload`) carrying
    `annotations`, and an empty config."""
    config = b'{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]}}'
    await push_blob(client, "prod/app", config)
    await push_blob(client, "prod/app", payload)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(simple_signing.SIMPLE_SIGNING, payload, annotations=annotations)],
    }
    resp = await client.put(
        f"/v2/prod/app/manifests/{digest.replace(':', '-')}.sig",
        data=json.dumps(manifest).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201, await resp.text()


def write_key(folder: Path, key: Any) -> None:
    (folder / "keys").mkdir(exist_ok=True)
    replacement = folder / "keys" / "release.pub.new"
    replacement.write_bytes(public_pem(key))
    replacement.replace(folder / "keys" / "release.pub")  # as config tools replace files


async def signed(client: TestClient, key: Any) -> str:
    digest, _ = await push_image(client, "prod/app", "v1")
    payload = simple_signing_payload(REF, digest)
    await push_cosign_signature(client, "prod/app", digest, payload, sign(key, payload))
    assert await pull(client, "prod/app", "v1") == (200, "")
    return digest


async def test_replacing_a_key_file_then_reload_revokes_the_old_key(
    start_client: Any, tmp_path: Path
) -> None:
    old = ec.generate_private_key(ec.SECP256R1())
    write_key(tmp_path, old)
    (tmp_path / "policy.yaml").write_text(POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    await signed(client, old)
    write_key(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    # What SIGHUP runs: the policy file is unchanged, the key it names is not.
    assert client.app[CONTEXT].policy.reload() is True
    status, message = await pull(client, "prod/app", "v1")
    assert status == 403
    assert message.startswith(RULE + "by an unknown key (sha256:")


async def test_the_file_watch_sees_a_replaced_key_file(start_client: Any, tmp_path: Path) -> None:
    old = ec.generate_private_key(ec.SECP256R1())
    write_key(tmp_path, old)
    (tmp_path / "policy.yaml").write_text(POLICY)
    client = await start_client(
        policy={"file": str(tmp_path / "policy.yaml"), "reload": True, "poll_interval": "0.1s"}
    )
    await signed(client, old)
    write_key(tmp_path, ec.generate_private_key(ec.SECP256R1()))

    async def revoked() -> bool:
        return (await pull(client, "prod/app", "v1"))[0] == 403

    await eventually(revoked)
    _, message = await pull(client, "prod/app", "v1")
    assert message.startswith(RULE + "by an unknown key (sha256:")


LOGGED = """\
version: 1
trust:
  keys:
    release: {pem_file: keys/release.pub, rekor: trusted_root.json}
rules:
  - name: prod is signed by release
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      signature: {any_of: [release]}
"""


async def test_a_replaced_trusted_root_is_used_without_a_restart(
    start_client: Any, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    write_key(tmp_path, key)
    rekor = write_rekor_root(tmp_path)
    (tmp_path / "policy.yaml").write_text(LOGGED)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    digest, _ = await push_image(client, "prod/app", "v1")
    payload = simple_signing_payload(REF, digest)
    signature = sign(key, payload)
    annotations = {
        simple_signing.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode(),
        simple_signing.BUNDLE_ANNOTATION: rekor_bundle(
            rekor, hashedrekord(key, payload, signature)
        ),
    }
    await push_simple_signature(client, digest, payload, annotations)
    assert await pull(client, "prod/app", "v1") == (200, "")
    # The operator rotates the Rekor key: the old log's entries no longer count.
    write_rekor_root(tmp_path)
    assert client.app[CONTEXT].policy.reload() is True
    log_id = json.loads(annotations[simple_signing.BUNDLE_ANNOTATION])["Payload"]["logID"]
    assert await pull(client, "prod/app", "v1") == (
        403,
        RULE + "by release, but without a valid Rekor entry: "
        f"Rekor log {log_id[:12]}… is not in the trusted root",
    )


IDENTITY = """\
version: 1
trust:
  {section}
rules:
  - name: prod is signed
    match: {{repositories: ["prod/**"], on: [pull]}}
    require:
      signature: {{any_of: [ci]}}
"""


def production_root_without_start(folder: Path) -> None:
    from importlib import resources

    source = (
        resources.files("sigstore")
        / "_store"
        / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
        / "trusted_root.json"
    )
    document = json.loads(source.read_text())
    del document["tlogs"][0]["publicKey"]["validFor"]["start"]
    (folder / "trusted_root.json").write_text(json.dumps(document))


@pytest.mark.parametrize(
    "section",
    [
        'identities: {ci: {issuer: "https://token.actions.githubusercontent.com", '
        'subject: "x", trusted_root: trusted_root.json}}',
        "keys: {ci: {pem_file: release.pub, rekor: trusted_root.json}}",
    ],
    ids=["identity", "keyed-rekor"],
)
def test_policy_check_refuses_a_trusted_root_the_verifier_cannot_use(
    tmp_path: Path, section: str, capsys: pytest.CaptureFixture[str]
) -> None:
    production_root_without_start(tmp_path)
    (tmp_path / "release.pub").write_bytes(public_pem(ec.generate_private_key(ec.SECP256R1())))
    (tmp_path / "policy.yaml").write_text(IDENTITY.format(section=section))
    assert check_policy(tmp_path / "policy.yaml", io.StringIO()) == 1
    text = capsys.readouterr().err
    assert f"{tmp_path / 'trusted_root.json'}: not a usable Sigstore trusted root: " in text
    assert "tlogs.0.publicKey.validFor.start" in text


# -- proofs that expire ---------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(
    subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool, until: datetime.datetime
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        builder = (
            builder.add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName("release.acme.example")]), critical=False
            )
        )
    return builder.sign(issuer_key, hashes.SHA256())


CA_POLICY = """\
version: 1
trust:
  certificates:
    corp-ca: {pem_file: ca.pem}
rules:
  - name: prod is signed by corp-ca
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      signature: {any_of: [corp-ca]}
"""

#: How long the short-lived proofs live. The tests hold the registry's wall clock and move it
#: to the proof's end (time-machine): how long the steps before it take does not matter.
LIFETIME = 3600

CA_RULE = 'rule "prod is signed by corp-ca": needs a signature by corp-ca; found 1 signature, '


def pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def short_lived(tmp_path: Path) -> tuple[Any, x509.Certificate, x509.Certificate, float, Any]:
    """A private CA (`ca.pem` beside the policy) and a signing certificate that ends `LIFETIME`
    seconds from now, on a whole second (certificates carry whole seconds)."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    far = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365)
    root = issue("Acme Root", root_key, "Acme Root", root_key, ca=True, until=far)
    key = ec.generate_private_key(ec.SECP256R1())
    end = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(
        seconds=LIFETIME
    )
    leaf = issue("release", key, "Acme Root", root_key, ca=False, until=end)
    (tmp_path / "ca.pem").write_text(pem(root))
    (tmp_path / "policy.yaml").write_text(CA_POLICY)
    return key, leaf, root, end.timestamp(), root_key


def expired_at(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


async def test_a_private_ca_cosign_signature_stops_counting_when_its_certificate_expires(
    start_client: Any, tmp_path: Path, short_lived: Any
) -> None:
    key, leaf, root, end, _ = short_lived
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    # The registry's wall clock is held, then moved to the certificate's end: however slow the
    # machine, the first pulls come before it and the last one after it.
    with time_machine.travel(int(time.time()), tick=False) as clock:
        digest, _ = await push_image(client, "prod/app", "v1")
        payload = simple_signing_payload(REF, digest)
        signature = sign(key, payload)
        annotations = {
            simple_signing.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode(),
            simple_signing.CERTIFICATE_ANNOTATION: pem(leaf),
            simple_signing.CHAIN_ANNOTATION: pem(root),
        }
        await push_simple_signature(client, digest, payload, annotations)
        assert await pull(client, "prod/app", "v1") == (200, "")  # decided and cached
        clock.shift(end - 1 - time.time())
        assert await pull(client, "prod/app", "v1") == (200, "")  # a second before notAfter
        clock.shift(1)  # notAfter itself: X.509 validity includes it (RFC 5280)
        assert await pull(client, "prod/app", "v1") == (200, "")
        clock.shift(1)  # the second after it
        assert await pull(client, "prod/app", "v1") == (
            403,
            CA_RULE
            + f"by corp-ca but its certificate or signature expired at {expired_at(end + 1)}",
        )


async def test_a_notation_signature_stops_counting_at_its_expiry(
    start_client: Any, tmp_path: Path, short_lived: Any
) -> None:
    key, _, root, _, root_key = short_lived
    far = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
    leaf = issue("release", key, "Acme Root", root_key, ca=False, until=far)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    # The registry's wall clock is held, then moved past the signature's expiry: however slow
    # the machine, the first pulls come before it and the last one after it.
    with time_machine.travel(int(time.time()), tick=False) as clock:
        digest, _ = await push_image(client, "prod/app", "v1")
        end = datetime.datetime.fromtimestamp(time.time() + LIFETIME, datetime.UTC)
        envelope = make_jws(key, [leaf, root], digest, **{"io.cncf.notary.expiry": end.isoformat()})
        await push_notation(client, digest, envelope)
        assert await pull(client, "prod/app", "v1") == (200, "")
        clock.shift(LIFETIME - 1)
        assert await pull(client, "prod/app", "v1") == (200, "")  # the signature's last second
        clock.shift(2)  # past the expiry
        ended = expired_at(end.timestamp())
        assert await pull(client, "prod/app", "v1") == (
            403,
            CA_RULE + f"by corp-ca but its certificate or signature expired at {ended}",
        )


async def test_sighup_to_the_running_server_revokes_a_replaced_key(tmp_path: Path) -> None:
    """The same through a real `trustyard serve` process and a real SIGHUP."""
    old = ec.generate_private_key(ec.SECP256R1())
    write_key(tmp_path, old)
    (tmp_path / "policy.yaml").write_text(POLICY)
    server = await asyncio.to_thread(
        start_registry,
        tmp_path / "data",
        extra_args=["--policy", str(tmp_path / "policy.yaml")],
        env={"TRUSTYARD_POLICY__RELOAD": "false"},
    )
    try:
        async with aiohttp.ClientSession(base_url=server.url) as session:
            client: Any = session  # speaks the same calls as the test client
            await signed(client, old)
            write_key(tmp_path, ec.generate_private_key(ec.SECP256R1()))
            server.process.send_signal(signal.SIGHUP)

            async def reloaded() -> bool:
                return "reloaded" in server.log()

            await eventually(reloaded)
            status, message = await pull(client, "prod/app", "v1")
            assert status == 403
            assert message.startswith(RULE + "by an unknown key (sha256:")
    finally:
        assert await asyncio.to_thread(server.stop) == 0


def test_a_replaced_identity_trusted_root_is_verified_against_at_once(tmp_path: Path) -> None:
    """A certificate bundle is verified by the `sigstore` package against the identity's trusted
    root file as it is now: a root replaced under the same path is not served from a cache."""
    from importlib import resources

    from policies.signatures import bundles
    from policies.signatures.trust import parse_trust

    vectors = Path(__file__).parent.parent / "policies" / "vectors" / "sigstore-python"
    store = resources.files("sigstore") / "_store"
    roots = {
        name: (store / folder / "trusted_root.json").read_text()
        for name, folder in (
            ("production", "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"),
            ("staging", "https%3A%2F%2Ftuf-repo-cdn.sigstage.dev"),
        )
    }
    section = {
        "identities": {
            "rfc8785": {
                "issuer": "https://token.actions.githubusercontent.com",
                "subject": "https://github.com/trailofbits/rfc8785.py/.github/workflows/"
                "release.yml@refs/tags/v0.1.2",
                "trusted_root": "trusted_root.json",
            }
        }
    }
    wheel = vectors / "bundle_v3_github.whl"
    image = "sha256:" + hashlib.sha256(wheel.read_bytes()).hexdigest()
    content = (vectors / "bundle_v3_github.whl.sigstore").read_bytes()

    def verdicts() -> list[tuple[bool, str | None]]:
        config, problems = parse_trust(section, tmp_path)
        assert problems == []
        return [(f.valid, f.signer) for f in bundles.verify_layer(config, image, content)]

    (tmp_path / "trusted_root.json").write_text(roots["production"])
    assert verdicts() == [(True, "rfc8785")]
    (tmp_path / "trusted_root.json").write_text(roots["staging"])  # same path, other root
    assert verdicts() == [(False, None)]
