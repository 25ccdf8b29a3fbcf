"""A signed upstream image under a `signature` rule: its cosign signature comes along with it,
names the upstream's repository (remapped to the proxied name, as containers policy.json's
`remapIdentity`), and the pull is allowed; without a signature, or with one for another
repository or another registry, the pull is refused saying why."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from registry.context import CONTEXT
from tests.proxy.upstreams import OCI_MANIFEST, proxy_config, push_signature
from tests.signing import public_pem, sign, simple_signing_payload

POLICY = """\
version: 1
trust:
  keys:
    release: {pem_file: release.pub}
rules:
  - name: mirrored images are signed by release
    match: {repositories: ["mirror.test/**"], on: [pull]}
    require:
      signature: {any_of: [release]}
"""
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
RULE = 'rule "mirrored images are signed by release": needs a signature by release; '


@pytest.fixture
def release_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
async def gated(start_client, tmp_path: Path, release_key, upstream_registry):
    (tmp_path / "release.pub").write_bytes(public_pem(release_key))
    (tmp_path / "policy.yaml").write_text(POLICY)
    return await start_client(
        policy={"file": str(tmp_path / "policy.yaml"), "reload": False},
        **proxy_config(upstream_registry.url, upstream_registry.ca),
    )


async def denial(resp) -> str:
    body = await resp.json()
    assert body["errors"][0]["code"] == "DENIED"
    return body["errors"][0]["message"]


async def test_upstream_signature_comes_along_and_the_pull_is_allowed(
    gated, upstream, upstream_registry, release_key
):
    digest, manifest = await upstream.push_image("team/app", "v1", [b"signed layer"])
    host = upstream_registry.url.split("://", 1)[1]
    payload = simple_signing_payload(f"{host}/team/app", digest)  # the upstream's name
    await push_signature(upstream, "team/app", digest, payload, sign(release_key, payload))

    resp = await gated.get("/v2/mirror.test/team/app/manifests/v1")
    assert resp.status == 200, await resp.text()
    assert await resp.read() == manifest
    sig_tag = digest.replace(":", "-") + ".sig"
    mirrored = await gated.get(f"/v2/mirror.test/team/app/manifests/{sig_tag}")
    assert mirrored.status == 200


async def test_unsigned_upstream_image_is_refused(gated, upstream):
    await upstream.push_image("team/unsigned", "v1", [b"unsigned layer"])
    resp = await gated.get("/v2/mirror.test/team/unsigned/manifests/v1")
    assert resp.status == 403
    assert await denial(resp) == RULE + "found no signature"


@pytest.mark.parametrize(
    ("signed_name", "why"),
    [
        # Another repository of the same upstream.
        ("{host}/team/other", "for repository team/other"),
        # The same path on another registry: not the upstream this namespace mirrors.
        ("evil.example/team/app", "for repository team/app"),
    ],
)
async def test_signature_for_another_name_does_not_count(
    gated, upstream, upstream_registry, release_key, signed_name, why
):
    digest, _ = await upstream.push_image("team/app", "v1", [b"layer " + signed_name.encode()])
    host = upstream_registry.url.split("://", 1)[1]
    payload = simple_signing_payload(signed_name.format(host=host), digest)
    await push_signature(upstream, "team/app", digest, payload, sign(release_key, payload))
    resp = await gated.get("/v2/mirror.test/team/app/manifests/v1")
    assert resp.status == 403
    message = await denial(resp)
    assert message.startswith(RULE)
    assert f"by release but {why}" in message


async def test_signature_by_an_unknown_key_does_not_count(gated, upstream, upstream_registry):
    digest, _ = await upstream.push_image("team/app", "v1", [b"other key layer"])
    host = upstream_registry.url.split("://", 1)[1]
    payload = simple_signing_payload(f"{host}/team/app", digest)
    stranger = ec.generate_private_key(ec.SECP256R1())
    await push_signature(upstream, "team/app", digest, payload, sign(stranger, payload))
    resp = await gated.get("/v2/mirror.test/team/app/manifests/v1")
    assert resp.status == 403
    assert (await denial(resp)).startswith(RULE)


async def fronted(start_client, tmp_path: Path, release_key, front, ttl: str):
    """`gated` through the counting front, with manifest TTL `ttl`."""
    (tmp_path / "release.pub").write_bytes(public_pem(release_key))
    (tmp_path / "policy.yaml").write_text(POLICY)
    return await start_client(
        policy={"file": str(tmp_path / "policy.yaml"), "reload": False},
        **proxy_config(front.url, None, manifest_ttl=ttl),
    )


def companion_looks(front, digest: str) -> int:
    """Requests that reached the upstream for the cosign `.sig` tag of `digest`."""
    sig_tag = digest.replace(":", "-") + ".sig"
    return sum(n for (_, path), n in front.requests.items() if path.endswith("/" + sig_tag))


async def pull_until_allowed(client, path: str, timeout: float = 30.0):
    """GET `path` until the policy allows it (the refresh waits for the manifest TTL); each
    refusal on the way must be the signature rule's."""
    deadline = time.monotonic() + timeout
    while True:
        resp = await client.get(path)
        if resp.status == 200:
            return resp
        assert resp.status == 403, await resp.text()
        assert await denial(resp) == RULE + "found no signature"
        assert time.monotonic() < deadline, "the signature added upstream was never picked up"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_a_signature_added_upstream_later_is_picked_up_after_the_ttl(
    start_client, tmp_path, front, upstream, release_key, by
):
    client = await fronted(start_client, tmp_path, release_key, front, "1s")
    layer = b"signed later " + by.encode()
    digest, manifest = await upstream.push_image("team/late", "v1", [layer])
    reference = "v1" if by == "tag" else digest
    path = f"/v2/mirror.test/team/late/manifests/{reference}"
    resp = await client.get(path)
    assert resp.status == 403
    assert await denial(resp) == RULE + "found no signature"

    # Signed upstream after Trustyard cached the image; the tag does not move. (The upstream
    # Trustyard knows is the front: the signature names the image there.)
    host = front.url.split("://", 1)[1]
    payload = simple_signing_payload(f"{host}/team/late", digest)
    await push_signature(upstream, "team/late", digest, payload, sign(release_key, payload))
    looks_before = companion_looks(front, digest)
    started = time.monotonic()

    allowed = await pull_until_allowed(client, path)
    elapsed = time.monotonic() - started
    assert await allowed.read() == manifest
    assert allowed.headers["Docker-Content-Digest"] == digest
    db = client.app[CONTEXT].db
    if by == "tag":
        assert await db.tag_target("mirror.test/team/late", "v1") == digest  # did not move
    sig_tag = digest.replace(":", "-") + ".sig"
    assert await db.tag_target("mirror.test/team/late", sig_tag) is not None
    # Rate-limited: the `.sig` tag was asked about (a HEAD, then one GET when it was new) at
    # most once per TTL while the pulls were refused, not once per pull.
    looks = companion_looks(front, digest) - looks_before
    assert 2 <= looks <= 2 * (int(elapsed) + 2), (looks, elapsed)
    metrics = await (await client.get("/metrics")).text()
    assert 'trustyard_proxy_events_total{event="companions_gained"} 1' in metrics


async def test_a_denied_pull_does_not_ask_upstream_again_within_the_ttl(
    start_client, tmp_path, front, upstream, release_key
):
    client = await fronted(start_client, tmp_path, release_key, front, "1h")
    digest, _ = await upstream.push_image("team/quiet", "v1", [b"never signed"])
    for reference in ("v1", digest, "v1", digest, "v1"):
        resp = await client.get(f"/v2/mirror.test/team/quiet/manifests/{reference}")
        assert resp.status == 403
    # One look when the image was first fetched (TTL one hour): the refusals asked nothing.
    assert companion_looks(front, digest) == 1


async def push_index(upstream, name: str, tag: str, children: list[tuple[str, bytes]]) -> str:
    """Push an OCI index of `children` (digest, manifest) as linux/amd64, linux/arm64, ...;
    its digest."""
    arches = ["amd64", "arm64", "s390x"]
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(body),
                "platform": {"os": "linux", "architecture": arches[i]},
            }
            for i, (digest, body) in enumerate(children)
        ],
    }
    async with aiohttp.ClientSession() as session:
        body = json.dumps(index).encode()
        return await upstream.put_manifest(session, name, tag, body, OCI_INDEX)


async def test_an_index_signed_upstream_later_covers_its_platform_image_pulled_by_digest(
    start_client, tmp_path, front, upstream, release_key
):
    client = await fronted(start_client, tmp_path, release_key, front, "1s")
    children = [
        await upstream.push_image("team/multi", arch, [b"platform layer " + arch.encode()])
        for arch in ("amd64", "arm64")
    ]
    index = await push_index(upstream, "team/multi", "v1", children)
    # Pulled as docker does: the index by tag, then its platform image by digest. Unsigned:
    # both refused (the proxy stored them, with the index's children).
    resp = await client.get("/v2/mirror.test/team/multi/manifests/v1")
    assert resp.status == 403
    assert await denial(resp) == RULE + "found no signature"
    child, child_manifest = children[0]
    path = f"/v2/mirror.test/team/multi/manifests/{child}"
    resp = await client.get(path)
    assert resp.status == 403
    assert await denial(resp) == RULE + "found no signature"

    # The index (not the platform image) is signed upstream afterwards, as cosign signs a
    # multi-platform image; only the platform image is pulled from now on.
    host = front.url.split("://", 1)[1]
    payload = simple_signing_payload(f"{host}/team/multi", index)
    await push_signature(upstream, "team/multi", index, payload, sign(release_key, payload))
    looks_before = companion_looks(front, index)
    started = time.monotonic()
    allowed = await pull_until_allowed(client, path)
    elapsed = time.monotonic() - started
    assert await allowed.read() == child_manifest
    db = client.app[CONTEXT].db
    assert await db.tag_target("mirror.test/team/multi", index.replace(":", "-") + ".sig")
    # The index's `.sig` tag was asked about at most once per TTL while the pulls were refused.
    looks = companion_looks(front, index) - looks_before
    assert 2 <= looks <= 2 * (int(elapsed) + 2), (looks, elapsed)
    # The other platform image is covered too, and the index itself.
    assert (
        await client.get(f"/v2/mirror.test/team/multi/manifests/{children[1][0]}")
    ).status == 200
    assert (await client.get("/v2/mirror.test/team/multi/manifests/v1")).status == 200


async def test_a_platform_image_whose_index_was_never_pulled_is_refused_until_the_index_is(
    start_client, tmp_path, front, upstream, release_key
):
    client = await fronted(start_client, tmp_path, release_key, front, "1h")
    children = [
        await upstream.push_image("team/pinned", arch, [b"pinned layer " + arch.encode()])
        for arch in ("amd64", "arm64")
    ]
    index = await push_index(upstream, "team/pinned", "v1", children)
    host = front.url.split("://", 1)[1]
    payload = simple_signing_payload(f"{host}/team/pinned", index)
    await push_signature(upstream, "team/pinned", index, payload, sign(release_key, payload))

    # Only the index is signed, and nothing tells which index lists a platform image: pulled
    # by its digest alone, it is refused, and no index is looked for upstream.
    child, child_manifest = children[0]
    path = f"/v2/mirror.test/team/pinned/manifests/{child}"
    resp = await client.get(path)
    assert resp.status == 403
    assert await denial(resp) == RULE + "found no signature"
    asked = [p for (_, p) in front.requests]
    assert not [p for p in asked if p.endswith(("/manifests/v1", f"/manifests/{index}"))]
    assert not [p for p in asked if "/tags/list" in p]

    # Once the index is pulled (by tag, as docker and containerd do), its signature covers it.
    assert (await client.get("/v2/mirror.test/team/pinned/manifests/v1")).status == 200
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    assert await resp.read() == child_manifest
