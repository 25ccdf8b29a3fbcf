"""A cached allow dies with its evidence: the pull verdict is kept only until the earliest
moment its proofs end (here a Notation signature's expiry), then decided afresh and refused.
An attacker whose image was once allowed keeps pulling it from the cache otherwise."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import time_machine
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.oci import OCI_MANIFEST, descriptor, push_blob, push_image
from tests.policies.test_signatures_notation import _certificate
from tests.security.test_notation_envelopes import jws, payload_for
from tests.signing import pull

NOTARY = "application/vnd.cncf.notary.signature"
EMPTY = "application/vnd.oci.empty.v1+json"
POLICY = """\
version: 1
trust:
  certificates:
    corp-ca: {pem_file: corp-ca.pem}
rules:
  - name: prod is signed by corp-ca
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      signature: {any_of: [corp-ca]}
"""


async def push_notation_referrer(client: TestClient, name: str, image: str, env: bytes) -> None:
    """As notation does: empty config, one JWS layer, `subject` = the image."""
    await push_blob(client, name, b"{}")
    await push_blob(client, name, env)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": NOTARY,
        "config": descriptor(EMPTY, b"{}"),
        "layers": [descriptor("application/jose+json", env)],
        "subject": {"mediaType": OCI_MANIFEST, "digest": image, "size": 0},
    }
    body = json.dumps(manifest).encode()
    resp = await client.put(
        f"/v2/{name}/manifests/{descriptor('', body)['digest']}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201, await resp.text()


async def test_an_allow_is_not_served_from_the_cache_after_its_signature_expires(
    start_client: Any, tmp_path: Path
) -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("Acme Root", root_key, "Acme Root", root_key, ca=True, days=3650)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate("release", key, "Acme Root", root_key, ca=False)
    (tmp_path / "corp-ca.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "policy.yaml").write_text(POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    digest, _ = await push_image(client, "prod/app", "v1")
    # The registry's wall clock is held, then moved past the expiry: however slow the machine,
    # the first pulls come before it and the last one after it.
    held = int(time.time())  # a whole second: the moves below land exactly
    with time_machine.travel(held, tick=False) as clock:
        expiry = datetime.datetime.fromtimestamp(held + 3600, datetime.UTC)
        envelope = jws(
            key, [leaf, root], payload_for(digest), **{"io.cncf.notary.expiry": expiry.isoformat()}
        )
        await push_notation_referrer(client, "prod/app", digest, envelope)
        assert await pull(client, "prod/app", "v1") == (200, "")
        clock.shift(3599)  # the last second before the expiry
        assert await pull(client, "prod/app", "v1") == (200, "")  # now from the cache
        clock.shift(2)
        status, message = await pull(client, "prod/app", "v1")
    assert status == 403
    assert message == (
        'rule "prod is signed by corp-ca": needs a signature by corp-ca; found 1 signature, by '
        f"corp-ca but its certificate or signature expired at {expiry:%Y-%m-%dT%H:%M:%SZ}"
    )
