"""Recorded signature proofs count only under the trust they were verified with, and a
verification shared by concurrent pulls is not handed to the pulls that come after it.

An attacker whose key was just rotated out keeps pulling what that key signed: the proofs
recorded under the old `trust:` must not count under the new one, whichever way the two trust
versions happen to sort; and once a signature is deleted, a proof verified earlier by a pull
must not be served again from the verification in flight at the time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec

from registry.context import CONTEXT
from tests.oci import push_image
from tests.signing import public_pem, pull, push_cosign_signature, sign, simple_signing_payload

POLICY = """\
version: 1
trust:
  keys:
    release: {pem_file: release.pub}
rules:
  - name: prod is signed by release
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      signature: {any_of: [release]}
"""
#: The same rule and key, one more trusted key: another trust version.
WIDER = POLICY.replace(
    "    release: {pem_file: release.pub}\n",
    "    release: {pem_file: release.pub}\n    ci: {pem_file: ci.pub}\n",
)
RULE = 'rule "prod is signed by release": needs a signature by release; found '
UNSIGNED = RULE + "no signature"


async def signed_image(client: TestClient, key: Any, tag: str) -> str:
    digest, _ = await push_image(client, "prod/app", tag)
    payload = simple_signing_payload("localhost:5000/prod/app", digest)
    await push_cosign_signature(client, "prod/app", digest, payload, sign(key, payload))
    return digest


async def test_proofs_recorded_under_a_rotated_key_never_count_either_way(
    start_client: Any, tmp_path: Path
) -> None:
    """Rotate A to B, then B back to A: the trust version moves once up and once down (in
    whichever order the two hashes sort), and each time the other key's proofs stop counting."""
    a, b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "release.pub"
    key_file.write_bytes(public_pem(a))
    (tmp_path / "policy.yaml").write_text(POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    gate = client.server.app[CONTEXT].policy
    await signed_image(client, a, "by-a")
    assert await pull(client, "prod/app", "by-a") == (200, "")

    key_file.write_bytes(public_pem(b))
    assert gate.reload() is True
    await signed_image(client, b, "by-b")  # its proofs recorded under B's trust
    status, message = await pull(client, "prod/app", "by-a")
    assert (status, message[: len(RULE)]) == (403, RULE)
    assert "by an unknown key (sha256:" in message
    assert await pull(client, "prod/app", "by-b") == (200, "")

    key_file.write_bytes(public_pem(a))
    assert gate.reload() is True
    status, message = await pull(client, "prod/app", "by-b")
    assert (status, message[: len(RULE)]) == (403, RULE)
    assert "by an unknown key (sha256:" in message
    assert await pull(client, "prod/app", "by-a") == (200, "")


async def test_a_proof_verified_by_a_pull_dies_with_its_signature(
    start_client: Any, tmp_path: Path
) -> None:
    """The proofs are verified by a pull (the trust changed since the push), then the signature
    is deleted: the next pull verifies again and finds nothing, rather than reusing the
    verification the earlier pull ran."""
    release = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "release.pub").write_bytes(public_pem(release))
    (tmp_path / "ci.pub").write_bytes(public_pem(ec.generate_private_key(ec.SECP256R1())))
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    client = await start_client(policy={"file": str(path), "reload": False})
    gate = client.server.app[CONTEXT].policy
    digest = await signed_image(client, release, "v1")
    path.write_text(WIDER)
    assert gate.reload() is True
    assert await pull(client, "prod/app", "v1") == (200, "")  # verified by this pull
    sig_tag = digest.replace(":", "-") + ".sig"
    assert (await client.delete(f"/v2/prod/app/manifests/{sig_tag}")).status == 202
    assert await pull(client, "prod/app", "v1") == (403, UNSIGNED)
    assert await pull(client, "prod/app", digest) == (403, UNSIGNED)
