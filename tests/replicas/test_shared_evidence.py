"""A signature pushed to one replica lifts the quarantine on the other within a second, on both
backends: every process remembers evidence versions (and the pull decisions keyed by them), and
forgets them when the shared evidence generation, bumped in the signature's transaction, moves
(`storage.metadata.generations`, read every 250 ms)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec

from tests.oci import OCI_MANIFEST, error_codes, push_image
from tests.propagation import Wait, check_within, poll_until
from tests.replicas.conftest import StartReplicas
from tests.signing import public_pem, push_cosign_signature, sign, simple_signing_payload

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

#: Only turns a hang into a failure; the latency itself is asserted below.
PATIENCE = 60.0
#: The promise: a change on one replica decides pulls on the other within this.
WITHIN = 1.0


async def pull_status(session: aiohttp.ClientSession, name: str, reference: str) -> int:
    async with session.get(
        f"/v2/{name}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}
    ) as resp:
        if resp.status != 200:
            body = await resp.json()
            assert error_codes(body) == ["DENIED"], body
        return resp.status


async def until_allowed(session: aiohttp.ClientSession, name: str, reference: str) -> Wait:
    """Pull until allowed; when it was, and the slowest pull on the way."""

    async def allowed() -> bool:
        return await pull_status(session, name, reference) == 200

    return await poll_until(allowed, PATIENCE, "the pull was never allowed")


async def test_a_signature_pushed_to_one_replica_lifts_quarantine_on_the_other(
    tmp_path: Path, start_replicas: StartReplicas
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "release.pub").write_bytes(public_pem(key))
    (tmp_path / "policy.yaml").write_text(POLICY)
    replicas = start_replicas("--policy", str(tmp_path / "policy.yaml"))
    async with (
        aiohttp.ClientSession(base_url=replicas.a.url) as a,
        aiohttp.ClientSession(base_url=replicas.b.url) as b,
    ):
        digest, _ = await push_image(a, "prod/app", "v1")  # type: ignore[arg-type]
        # Quarantined on both, and the refusal is remembered by both (pulled twice each).
        for session in (a, b, a, b):
            assert await pull_status(session, "prod/app", "v1") == 403
        payload = simple_signing_payload(f"{replicas.a.host}/prod/app", digest)
        await push_cosign_signature(a, "prod/app", digest, payload, sign(key, payload))  # type: ignore[arg-type]
        # Replica A verifies the signature after the push (its observer) and bumps the evidence.
        lifted_on_a = await until_allowed(a, "prod/app", "v1")
        lifted_on_b = await until_allowed(b, "prod/app", "v1")
        check_within(lifted_on_a.held_at, [lifted_on_b], WITHIN, "lifting it on replica B")
