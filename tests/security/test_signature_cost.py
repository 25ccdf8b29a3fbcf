"""Bounded cost: a pusher cannot make signature verification take unbounded memory or time, or
answer 500, with a hostile signature manifest (thousands of layers naming one large payload, a
flood of signature referrers, malformed fields the verifiers do not expect).

Limits (see `policies.signatures.discovery`): signature layers per manifest, bytes per signature
layer, signatures verified per image; each refusal says which limit. Verification runs on its
own small thread pool, never on the event loop (its effect on other clients' latency is measured
by `bench/hostile_signature_bench.py`)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec

from policies.signatures import cosign as cosign_module
from policies.signatures import simple_signing
from policies.signatures.discovery import (
    MAX_SIGNATURE_BLOB,
    MAX_SIGNATURE_BYTES,
    MAX_SIGNATURE_LAYERS,
    MAX_SIMPLE_SIGNING_PAYLOAD,
    MAX_VERIFICATIONS,
)
from registry.context import CONTEXT
from tests.oci import OCI_CONFIG, OCI_MANIFEST, descriptor, error_codes, push_blob, push_image
from tests.policies.test_signatures_bundles import keyed_bundle, statement
from tests.policies.test_signatures_cosign import hashedrekord, rekor_bundle
from tests.registry.test_signature_bundles import push_bundle_referrer
from tests.signing import (
    public_pem,
    pull,
    push_cosign_signature,
    sign,
    simple_signing_payload,
    write_rekor_root,
)

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

NO_TRUST = """\
version: 1
rules:
  - name: small elsewhere
    match: {repositories: ["elsewhere/**"], on: [push]}
    require:
      max_size: 1GiB
"""

RULE = 'rule "prod is signed by release": needs a signature by release; '
REF = "localhost:5000/prod/app"


@pytest.fixture
def release_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def folder(tmp_path: Path, release_key: Any) -> Path:
    (tmp_path / "release.pub").write_bytes(public_pem(release_key))
    (tmp_path / "policy.yaml").write_text(POLICY)
    return tmp_path


@pytest.fixture
async def gated(start_client: Any, folder: Path) -> TestClient:
    return await start_client(policy={"file": str(folder / "policy.yaml"), "reload": False})


def sig_manifest(
    config: bytes, layers: list[tuple[bytes, bytes]], subject: str | None = None, note: str = ""
) -> bytes:
    """A cosign-layout signature manifest with one simple signing layer per (payload, sig)."""
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [
            descriptor(
                simple_signing.SIMPLE_SIGNING,
                payload,
                annotations={
                    simple_signing.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()
                },
            )
            for payload, signature in layers
        ],
    }
    if subject is not None:
        manifest["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1}
    if note:
        manifest["annotations"] = {"note": note}
    return json.dumps(manifest, separators=(",", ":")).encode()


async def put_sig(
    client: TestClient,
    image: str,
    layers: list[tuple[bytes, bytes]],
    *,
    referrer: bool = False,
    note: str = "",
) -> Any:
    """Push the blobs and a signature manifest (`.sig` tag, or a referrer by digest)."""
    config = b'{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]}}'
    await push_blob(client, "prod/app", config)
    for payload in {p for p, _ in layers}:
        await push_blob(client, "prod/app", payload)
    body = sig_manifest(config, layers, image if referrer else None, note)
    reference = descriptor("", body)["digest"] if referrer else image.replace(":", "-") + ".sig"
    return await client.put(
        f"/v2/prod/app/manifests/{reference}", data=body, headers={"Content-Type": OCI_MANIFEST}
    )


async def refused(resp: Any) -> tuple[int, str, str]:
    body = await resp.json()
    return resp.status, error_codes(body)[0], body["errors"][0]["message"]


async def test_a_sig_with_too_many_layers_is_refused_at_push(
    gated: TestClient, release_key: Any
) -> None:
    digest, _ = await push_image(gated, "prod/app", "v1")
    payload = simple_signing_payload(REF, digest)
    layers = [(payload, sign(release_key, payload))] * (MAX_SIGNATURE_LAYERS + 1)
    assert await refused(await put_sig(gated, digest, layers)) == (
        400,
        "MANIFEST_INVALID",
        f"signature manifest holds {MAX_SIGNATURE_LAYERS + 1} signature layers, more than the "
        f"limit of {MAX_SIGNATURE_LAYERS}",
    )
    # The same as a referrer.
    assert (await refused(await put_sig(gated, digest, layers, referrer=True)))[:2] == (
        400,
        "MANIFEST_INVALID",
    )
    assert (await pull(gated, "prod/app", "v1")) == (403, RULE + "found no signature")


async def test_the_reported_attack_3000_layers_of_one_1mib_payload_is_refused(
    gated: TestClient, release_key: Any
) -> None:
    digest, _ = await push_image(gated, "prod/app", "v1")
    payload = simple_signing_payload(REF, digest)
    big = payload[:-1] + b', "padding": "' + b"x" * (1 << 20) + b'"}'
    layers = [(big, sign(release_key, big))] * 3000
    status, code, message = await refused(await put_sig(gated, digest, layers))
    assert (status, code) == (400, "MANIFEST_INVALID")
    assert message == (
        "signature manifest holds 3000 signature layers, more than the limit of "
        f"{MAX_SIGNATURE_LAYERS}"
    )


async def test_a_payload_larger_than_the_limit_is_refused_at_push(
    gated: TestClient, release_key: Any
) -> None:
    digest, _ = await push_image(gated, "prod/app", "v1")
    payload = simple_signing_payload(REF, digest)
    big = payload[:-1] + b', "padding": "' + b"x" * MAX_SIMPLE_SIGNING_PAYLOAD + b'"}'
    assert await refused(await put_sig(gated, digest, [(big, sign(release_key, big))])) == (
        400,
        "MANIFEST_INVALID",
        f"signature manifest has a {simple_signing.SIMPLE_SIGNING} layer of {len(big)} bytes "
        f"(layer 0), more than the limit of {MAX_SIMPLE_SIGNING_PAYLOAD}",
    )


async def test_a_hostile_sig_stored_before_trust_is_not_verified(
    start_client: Any, folder: Path, release_key: Any
) -> None:
    # Pushed while the policy trusted no one (no limit applied at push), verified later.
    (folder / "open.yaml").write_text(NO_TRUST)
    client = await start_client(policy={"file": str(folder / "open.yaml"), "reload": False})
    digest, _ = await push_image(client, "prod/app", "v1")
    payload = simple_signing_payload(REF, digest)
    layers = [(payload, sign(release_key, payload))] * (MAX_SIGNATURE_LAYERS + 8)
    assert (await put_sig(client, digest, layers)).status == 201
    await client.close()
    client = await start_client(policy={"file": str(folder / "policy.yaml"), "reload": False})
    assert await pull(client, "prod/app", "v1") == (
        403,
        RULE + f"found 1 signature, signature manifest holds {MAX_SIGNATURE_LAYERS + 8} "
        f"signature layers, more than the limit of {MAX_SIGNATURE_LAYERS}: not verified",
    )


async def test_a_reload_that_adds_or_drops_trust_moves_the_push_limits_at_once(
    start_client: Any, folder: Path, release_key: Any
) -> None:
    # What a policy verifies signatures against is found once per loaded policy: a reload
    # builds a new one, and the very next push is held to (or freed from) the limits.
    policy_file = folder / "current.yaml"
    policy_file.write_text(NO_TRUST)
    client = await start_client(policy={"file": str(policy_file), "reload": False})
    gate = client.app[CONTEXT].policy
    digest, _ = await push_image(client, "prod/app", "v1")
    payload = simple_signing_payload(REF, digest)
    layers = [(payload, sign(release_key, payload))] * (MAX_SIGNATURE_LAYERS + 1)
    assert (await put_sig(client, digest, layers, referrer=True, note="1")).status == 201
    policy_file.write_text(POLICY)
    assert gate.reload() is True
    assert (await refused(await put_sig(client, digest, layers, referrer=True, note="2"))) == (
        400,
        "MANIFEST_INVALID",
        f"signature manifest holds {MAX_SIGNATURE_LAYERS + 1} signature layers, more than the "
        f"limit of {MAX_SIGNATURE_LAYERS}",
    )
    policy_file.write_text(NO_TRUST)
    assert gate.reload() is True
    assert (await put_sig(client, digest, layers, referrer=True, note="3")).status == 201


async def test_signatures_verified_per_image_are_bounded(
    gated: TestClient, release_key: Any
) -> None:
    digest, _ = await push_image(gated, "prod/app", "v1")
    stranger = ec.generate_private_key(ec.SECP256R1())
    junk = simple_signing_payload(REF, digest)
    junk_signature = sign(stranger, junk)
    full = [(junk, junk_signature)] * MAX_SIGNATURE_LAYERS
    for n in range(MAX_VERIFICATIONS // MAX_SIGNATURE_LAYERS):
        assert (await put_sig(gated, digest, full, referrer=True, note=str(n))).status == 201
    # Referrers by a stranger spent the budget: a genuine referrer after them is not verified.
    payload = simple_signing_payload(REF, digest)
    genuine = [(payload, sign(release_key, payload))]
    assert (await put_sig(gated, digest, genuine, referrer=True)).status == 201
    unknown = "sha256:" + hashlib.sha256(junk_signature).hexdigest()[:12] + "…"
    assert await pull(gated, "prod/app", "v1") == (
        403,
        RULE + f"found 2 signatures, by an unknown key ({unknown}); signature manifest would "
        f"exceed the limit of {MAX_VERIFICATIONS} signatures verified per image: not verified",
    )
    # The `.sig` tag is read before the referrers: a flood cannot crowd out the signature cosign
    # stores there.
    await push_cosign_signature(gated, "prod/app", digest, payload, sign(release_key, payload))
    assert await pull(gated, "prod/app", "v1") == (200, "")


async def test_signature_bytes_read_per_image_are_bounded(
    gated: TestClient, release_key: Any
) -> None:
    """Bytes read are spent from one budget per image: a referrer of Sigstore bundle layers at
    their size limit spends it all, and a genuine referrer after it is not read."""
    digest, _ = await push_image(gated, "prod/app", "v1")
    config = b'{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]}}'
    await push_blob(gated, "prod/app", config)
    bundle_type = "application/vnd.dev.sigstore.bundle.v0.3+json"
    layers = []
    for n in range(MAX_SIGNATURE_BYTES // MAX_SIGNATURE_BLOB):  # each one at its limit
        head = b'{"n":%d,"pad":"' % n
        blob = head + b"x" * (MAX_SIGNATURE_BLOB - len(head) - 2) + b'"}'
        await push_blob(gated, "prod/app", blob)
        layers.append(descriptor(bundle_type, blob))
    heavy = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": layers,
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1},
    }
    body = json.dumps(heavy).encode()
    resp = await gated.put(
        f"/v2/prod/app/manifests/{descriptor('', body)['digest']}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201
    payload = simple_signing_payload(REF, digest)
    genuine = [(payload, sign(release_key, payload))]
    assert (await put_sig(gated, digest, genuine, referrer=True)).status == 201
    junk = MAX_SIGNATURE_BYTES // MAX_SIGNATURE_BLOB
    assert await pull(gated, "prod/app", "v1") == (
        403,
        RULE + f"found {junk + 1} signatures, " + "not a Sigstore bundle; " * junk + "signature "
        f"manifest would exceed the limit of {MAX_SIGNATURE_BYTES} signature bytes read per "
        "image: not verified",
    )
    # The `.sig` tag is read first, before the budget is spent.
    await push_cosign_signature(gated, "prod/app", digest, payload, sign(release_key, payload))
    assert await pull(gated, "prod/app", "v1") == (200, "")


async def test_verification_runs_off_the_event_loop(
    gated: TestClient, release_key: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = cosign_module.verify_layer

    def spy(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(cosign_module, "verify_layer", spy)
    digest, _ = await push_image(gated, "prod/app", "v1")
    payload = simple_signing_payload(REF, digest)
    await push_cosign_signature(gated, "prod/app", digest, payload, sign(release_key, payload))
    assert await pull(gated, "prod/app", "v1") == (200, "")
    assert threads and all(name.startswith("trustyard-verify") for name in threads)
    assert threading.main_thread().name not in threads


# -- malformed fields: a clean refusal with a reason, never a 500 ----------------------------------

LOGGED_POLICY = """\
version: 1
trust:
  keys:
    release: {pem_file: release.pub, rekor: trusted_root.json}
rules:
  - name: prod is signed by release
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      signature: {any_of: [release]}
"""


def _null_body(rekor: Any, signer: Any, payload: bytes, signature: bytes) -> str:
    return rekor_bundle(rekor, base64.b64encode(b"null").decode())


def _list_body(rekor: Any, signer: Any, payload: bytes, signature: bytes) -> str:
    return rekor_bundle(rekor, base64.b64encode(b"[1, 2]").decode())


def _string_time(rekor: Any, signer: Any, payload: bytes, signature: bytes) -> str:
    document = json.loads(rekor_bundle(rekor, hashedrekord(signer, payload, signature)))
    document["Payload"]["integratedTime"] = "soon"
    return json.dumps(document)


def _null_payload(rekor: Any, signer: Any, payload: bytes, signature: bytes) -> str:
    return json.dumps({"SignedEntryTimestamp": "AAAA", "Payload": None})


def _hash_not_object(rekor: Any, signer: Any, payload: bytes, signature: bytes) -> str:
    body = json.loads(base64.b64decode(hashedrekord(signer, payload, signature)))
    body["spec"]["data"]["hash"] = "sha256"
    encoded = base64.b64encode(json.dumps(body).encode()).decode()
    return rekor_bundle(rekor, encoded)


def _logged_key_not_pem(rekor: Any, signer: Any, payload: bytes, signature: bytes) -> str:
    body = json.loads(base64.b64decode(hashedrekord(signer, payload, signature)))
    body["spec"]["signature"]["publicKey"]["content"] = base64.b64encode(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    ).decode()
    return rekor_bundle(rekor, base64.b64encode(json.dumps(body).encode()).decode())


NOT_BUNDLE = "the Rekor bundle annotation is not cosign's bundle JSON"


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (_null_body, NOT_BUNDLE),
        (_list_body, NOT_BUNDLE),
        (_string_time, NOT_BUNDLE),
        (_null_payload, NOT_BUNDLE),
        (_hash_not_object, "the Rekor entry body is not a hashedrekord v0.0.1"),
        (_logged_key_not_pem, "the Rekor entry logs another key"),
    ],
    ids=["body-null", "body-list", "time-string", "payload-null", "hash-string", "key-garbage"],
)
async def test_a_malformed_rekor_bundle_is_a_reason_not_a_500(
    start_client: Any, tmp_path: Path, release_key: Any, make: Any, why: str
) -> None:
    rekor = write_rekor_root(tmp_path)
    (tmp_path / "release.pub").write_bytes(public_pem(release_key))
    (tmp_path / "policy.yaml").write_text(LOGGED_POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    digest, _ = await push_image(client, "prod/app", "v1")
    payload = simple_signing_payload(REF, digest)
    signature = sign(release_key, payload)
    config = b'{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]}}'
    await push_blob(client, "prod/app", config)
    await push_blob(client, "prod/app", payload)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [
            descriptor(
                simple_signing.SIMPLE_SIGNING,
                payload,
                annotations={
                    simple_signing.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode(),
                    simple_signing.BUNDLE_ANNOTATION: make(rekor, release_key, payload, signature),
                },
            )
        ],
    }
    resp = await client.put(
        f"/v2/prod/app/manifests/{digest.replace(':', '-')}.sig",
        data=json.dumps(manifest).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201, await resp.text()
    assert await pull(client, "prod/app", "v1") == (
        403,
        RULE + f"found 1 signature, by release, but without a valid Rekor entry: {why}",
    )


async def test_a_replayed_null_body_bundle_does_not_break_the_genuine_signature(
    start_client: Any, tmp_path: Path, release_key: Any
) -> None:
    """A bundle whose Rekor entry body is `null` sits among the image's referrers; the genuine
    signature pushed after it is still verified and counts (the push and the pull answer, not
    500)."""
    rekor = write_rekor_root(tmp_path)
    (tmp_path / "release.pub").write_bytes(public_pem(release_key))
    (tmp_path / "policy.yaml").write_text(LOGGED_POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    digest, _ = await push_image(client, "prod/app", "v1")
    hostile, _ = keyed_bundle(release_key, statement(digest, name="registry.example/prod/app"))
    hostile["verificationMaterial"]["tlogEntries"] = [
        {
            "logIndex": "1",
            "logId": {"keyId": "AAAA"},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": "1700000000",
            "canonicalizedBody": base64.b64encode(b"null").decode(),
            "inclusionPromise": {"signedEntryTimestamp": "AAAA"},
        }
    ]
    await push_bundle_referrer(client, "prod/app", digest, json.dumps(hostile).encode())
    status, message = await pull(client, "prod/app", "v1")
    assert status == 403 and message.startswith(RULE + "found 1 signature, ")
    payload = simple_signing_payload(REF, digest)
    signature = sign(release_key, payload)
    bundle = rekor_bundle(rekor, hashedrekord(release_key, payload, signature))
    config = b'{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]}}'
    await push_blob(client, "prod/app", config)
    await push_blob(client, "prod/app", payload)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [
            descriptor(
                simple_signing.SIMPLE_SIGNING,
                payload,
                annotations={
                    simple_signing.SIGNATURE_ANNOTATION: base64.b64encode(signature).decode(),
                    simple_signing.BUNDLE_ANNOTATION: bundle,
                },
            )
        ],
    }
    resp = await client.put(
        f"/v2/prod/app/manifests/{digest.replace(':', '-')}.sig",
        data=json.dumps(manifest).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201, await resp.text()
    assert await pull(client, "prod/app", "v1") == (200, "")


NESTED = b"[" * 100_000 + b"]" * 100_000  # a JSON document nested deeper than any parser allows


@pytest.mark.parametrize(
    "media_type",
    [
        "application/jose+json",
        "application/vnd.dev.sigstore.bundle.v0.3+json",
    ],
)
async def test_a_deeply_nested_signature_layer_is_a_reason_not_a_500(
    gated: TestClient, media_type: str
) -> None:
    digest, _ = await push_image(gated, "prod/app", "v1")
    await push_blob(gated, "prod/app", b"{}")
    await push_blob(gated, "prod/app", NESTED)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.empty.v1+json", b"{}"),
            "layers": [descriptor(media_type, NESTED)],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1},
        }
    ).encode()
    resp = await gated.put(
        f"/v2/prod/app/manifests/{descriptor('', body)['digest']}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201, await resp.text()
    assert await pull(gated, "prod/app", "v1") == (
        403,
        RULE + f"found 1 signature, a malformed signature layer ({media_type}: nested too "
        "deeply); not verified",
    )


async def test_a_deeply_nested_simple_signing_payload_is_a_reason_not_a_500(
    gated: TestClient,
) -> None:
    digest, _ = await push_image(gated, "prod/app", "v1")
    nested = b"[" * 30_000 + b"]" * 30_000  # within the 64 KiB payload limit
    await push_cosign_signature(gated, "prod/app", digest, nested, b"\x30\x00")
    assert await pull(gated, "prod/app", "v1") == (
        403,
        RULE + f"found 1 signature, a malformed signature layer ({simple_signing.SIMPLE_SIGNING}: "
        "nested too deeply); not verified",
    )


async def test_concurrent_pulls_share_one_verification(
    gated: TestClient, release_key: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A referrer that is not a signature (an SBOM) makes the recorded proofs stale; the pulls
    that then arrive together verify the image's signatures once, not once each."""
    digest, _ = await push_image(gated, "prod/app", "v1")
    payload = simple_signing_payload(REF, digest)
    await push_cosign_signature(gated, "prod/app", digest, payload, sign(release_key, payload))
    calls: list[int] = []
    real = cosign_module.verify_layer

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(cosign_module, "verify_layer", counting)
    sbom = b'{"spdxVersion": "SPDX-2.3"}'
    await push_blob(gated, "prod/app", b"{}")
    await push_blob(gated, "prod/app", sbom)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/spdx+json",
            "config": descriptor("application/vnd.oci.empty.v1+json", b"{}"),
            "layers": [descriptor("application/spdx+json", sbom)],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1},
        }
    ).encode()
    resp = await gated.put(
        f"/v2/prod/app/manifests/{descriptor('', body)['digest']}",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert resp.status == 201, await resp.text()
    assert calls == []  # not a signature: nothing verified at push
    results = await asyncio.gather(*(pull(gated, "prod/app", "v1") for _ in range(20)))
    assert results == [(200, "")] * 20
    assert calls == [1]
