"""The blob gate's edges, each a way a layer of a refused image could leak or a released layer
be deleted: which refused image a quarantined blob's refusal names, a manifest deleted while its
blob's standing is decided, a cached standing at the instant it ends, the bounds on the manifests
a blob delete checks and on the index levels climbed, `default: deny`, a rule excluding the
repository, and a walk up from a layer that meets an index twice."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import pytest
import time_machine
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import policies.gateway
from registry.context import CONTEXT
from tests.auth.conftest import PASSWORDS, Accounts, As, basic
from tests.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    push_blob,
    sha256,
)
from tests.oci import push_image as push_plain
from tests.policies.test_signatures_notation import _certificate
from tests.security.test_blob_delete_races import immutable
from tests.security.test_engine_fail_closed import registry  # noqa: F401 (a fixture)
from tests.security.test_expired_verdicts import POLICY as SIGNED_POLICY
from tests.security.test_expired_verdicts import push_notation_referrer
from tests.security.test_notation_envelopes import jws, payload_for
from tests.security.test_quarantine_reads import PERMISSIONS, accounts, start  # noqa: F401
from tests.security.test_side_doors import (  # noqa: F401 (fixtures)
    denied,
    gated,
    policy_file,
    push_image,
    push_manifest,
)


async def test_a_quarantined_blob_is_refused_with_the_newest_refused_image_s_reason(
    gated: TestClient,  # noqa: F811
) -> None:
    """Two refused images share a layer: the refusal names the newest one's reason, not the
    oldest's (every refusing manifest would otherwise overwrite the one kept)."""
    _, _, layer = await push_image(
        gated, "prod/app", "old", b"shared layer", annotations={"com.example.reviewed": "no"}
    )
    _, _, same = await push_image(gated, "prod/app", "new", b"shared layer")
    assert same == layer
    message = await denied(await gated.get(f"/v2/prod/app/blobs/{layer}"))
    assert message == (
        f"blob {layer} is only part of images the policy refuses to pull from prod/app: "
        'rule "prod images are reviewed": manifest annotation com.example.reviewed missing'
    )


async def test_a_blob_whose_only_image_is_deleted_during_the_check_is_not_pullable(
    start_client: Any,
    tmp_path: Path,
    accounts: Accounts,  # noqa: F811
    monkeypatch: Any,
) -> None:
    """The manifest needing a layer is deleted between the lookup of who needs the layer and
    the read of that manifest: the layer is needed by no image any more, so only the
    repository's producers may read it; a puller is refused, not served the layer."""
    client = await start(start_client, tmp_path)
    ci = As(client, basic("ci", accounts.robot_token))
    olga = As(client, basic("olga", PASSWORDS["olga"]))
    manifest, raw = await push_plain(ci, "team-b/app", "v1", layers=[b"gone with its image"])
    layer = only_layer(raw)
    db = client.app[CONTEXT].policy.blobs.db
    lookup = db.manifests_needing
    seen: list[list[str]] = []

    async def then_delete_the_image(
        repository: str, digest: str, kind: str, limit: int
    ) -> list[str]:
        """Who needs the layer, as the database answered; then the image's delete lands
        (another request) before the gate reads the manifest."""
        found = await lookup(repository, digest, kind, limit)
        if digest == layer and kind == "blob" and not seen:
            seen.append(found)
            assert (await olga.delete(f"/v2/team-b/app/manifests/{manifest}")).status == 202
        return found

    monkeypatch.setattr(db, "manifests_needing", then_delete_the_image)
    alice = As(client, basic("alice", PASSWORDS["alice"]))
    message = await denied(await alice.get(f"/v2/team-b/app/blobs/{layer}"))
    assert seen == [[manifest]]
    assert message == (
        f'rule "nothing is pullable": blob {layer} is not part of any image of team-b/app that '
        "may be pulled (only those who may push to it can read it)"
    )
    assert (await olga.get(f"/v2/team-b/app/manifests/{manifest}")).status == 404


def only_layer(raw: bytes) -> str:
    """The digest of the only layer of the image manifest `raw`."""
    (layer,) = json.loads(raw)["layers"]
    return str(layer["digest"])


async def test_a_cached_standing_is_decided_afresh_from_the_instant_it_ends(
    start_client: Any, tmp_path: Path
) -> None:
    """Layers pullable only while their image's signature lasts: read from the cache up to the
    expiry, and refused from the very instant of it, and when first read again after it."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("Acme Root", root_key, "Acme Root", root_key, ca=True, days=3650)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate("release", key, "Acme Root", root_key, ca=False)
    (tmp_path / "corp-ca.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "policy.yaml").write_text(SIGNED_POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    layers = {}
    for name in ("prod/at", "prod/after"):
        digest, raw = await push_plain(client, name, "v1", layers=[name.encode()])
        layers[name] = (digest, only_layer(raw))
    held = int(time.time())  # a whole second: the moves below land exactly
    with time_machine.travel(held, tick=False) as clock:
        expiry = datetime.datetime.fromtimestamp(held + 3600, datetime.UTC)
        for name, (digest, _) in layers.items():
            envelope = jws(
                key,
                [leaf, root],
                payload_for(digest),
                **{"io.cncf.notary.expiry": expiry.isoformat()},
            )
            await push_notation_referrer(client, name, digest, envelope)
        for shift in (0, 3599):  # decided, then read from the cache the second before
            clock.shift(shift)
            for name, (_, layer) in layers.items():
                assert (await client.get(f"/v2/{name}/blobs/{layer}")).status == 200
        clock.shift(1)  # exactly the expiry
        at = await denied(await client.get(f"/v2/prod/at/blobs/{layers['prod/at'][1]}"))
        clock.shift(1)  # the other layer first read again a second after it
        after = await denied(await client.get(f"/v2/prod/after/blobs/{layers['prod/after'][1]}"))
    for name, message in (("prod/at", at), ("prod/after", after)):
        assert message == (
            f"blob {layers[name][1]} is only part of images the policy refuses to pull from "
            f'{name}: rule "prod is signed by corp-ca": needs a signature by corp-ca; found 1 '
            "signature, by corp-ca but its certificate or signature expired at "
            f"{expiry:%Y-%m-%dT%H:%M:%SZ}"
        )


@pytest.mark.parametrize("images", [2, 3])
async def test_a_blob_delete_checks_up_to_the_bound_of_manifests_and_refuses_past_it(
    gated: TestClient,  # noqa: F811
    monkeypatch: Any,
    images: int,
) -> None:
    """With the bound at 2: a layer two deletable images need is deleted; one three need is
    refused, naming the bound."""
    monkeypatch.setattr(policies.gateway, "MAX_REFERENCING", 2)
    for n in range(images):
        _, _, layer = await push_image(gated, "app/z", f"tmp{n}", b"bounded layer")
    resp = await gated.delete(f"/v2/app/z/blobs/{layer}")
    if images == 2:
        assert resp.status == 202, await resp.text()
        assert (await gated.get(f"/v2/app/z/blobs/{layer}")).status == 404
        return
    assert await denied(resp) == (
        f"blob {layer} is needed by more than 2 manifests of app/z; delete those first"
    )
    assert (await gated.get(f"/v2/app/z/blobs/{layer}")).status == 200


async def test_under_default_deny_the_blobs_of_a_repository_no_rule_names_are_refused(
    registry: Any,  # noqa: F811
) -> None:
    """No rule concerns the repository and the policy's default is deny: its images may not be
    pulled, and neither may their layers be read through the blob endpoint."""
    client = registry("version: 1\nrules: []\n")
    _, raw = await push_plain(client, "app/web", "v1", layers=[b"denied by default"])
    layer = only_layer(raw)
    client = registry("version: 1\ndefault: deny\nrules: []\n")
    message = await denied(await client.get(f"/v2/app/web/blobs/{layer}"))
    assert message == (
        f"blob {layer} is only part of images the policy refuses to pull from app/web: "
        'rule "default": no rule matches this request and the policy\'s default is deny'
    )
    client = registry("version: 1\ndefault: allow\nrules: []\n")
    resp = await client.get(f"/v2/app/web/blobs/{layer}")
    assert resp.status == 200 and await resp.read() == b"denied by default"


READERS_POLICY = """\
version: 1
rules:
  - name: team-b images are reviewed
    match: {repositories: ["team-b/**"], on: [pull]}
    require:
      annotations: {com.example.reviewed: "^yes$"}
"""


async def reviewed_image(client: Any, name: str, layer: bytes) -> tuple[str, bytes, str]:
    """Push a reviewed image by digest (no tag): its digest, its bytes and its layer."""
    await push_blob(client, name, b'{"architecture": "amd64", "os": "linux"}')
    await push_blob(client, name, layer)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, b'{"architecture": "amd64", "os": "linux"}'),
        "layers": [descriptor(OCI_LAYER, layer)],
        "annotations": {"com.example.reviewed": "yes"},
    }
    body = json.dumps(manifest).encode()
    digest = sha256(body)
    resp = await client.put(
        f"/v2/{name}/manifests/{digest}", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201, await resp.text()
    return digest, body, sha256(layer)


async def reviewed_index(
    client: Any, name: str, child: bytes, child_type: str, reference: str | None
) -> bytes:
    """Push a reviewed index over `child` (by digest, or tagged `reference`); its bytes."""
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            descriptor(
                child_type,
                child,
                platform={"os": "linux", "architecture": "amd64"},
            )
        ],
        "annotations": {"com.example.reviewed": "yes"},
    }
    body = json.dumps(index).encode()
    resp = await client.put(
        f"/v2/{name}/manifests/{reference or sha256(body)}",
        data=body,
        headers={"Content-Type": OCI_INDEX},
    )
    assert resp.status == 201, await resp.text()
    return body


@pytest.mark.parametrize("levels", [0, 1, 4, 5])
async def test_a_layer_is_pullable_through_a_tagged_index_at_most_four_levels_up(
    start_client: Any,
    tmp_path: Path,
    accounts: Accounts,  # noqa: F811
    levels: int,
) -> None:
    """An allowed image pushed by digest alone is pullable; one only inside indexes is pullable
    when a tagged index at most four levels up may be pulled; past that bound the gate stops
    climbing and the layer is kept to the repository's producers."""
    path = tmp_path / "policy.yaml"
    path.write_text(READERS_POLICY)
    client = await start_client(
        auth={"service": "trustyard-test", "permissions": PERMISSIONS},
        policy={"file": str(path), "reload": False},
    )
    ci = As(client, basic("ci", accounts.robot_token))
    _, body, layer = await reviewed_image(ci, "team-b/app", b"nested layer")
    for level in range(1, levels + 1):
        child_type = OCI_MANIFEST if level == 1 else OCI_INDEX
        top = "top" if level == levels else None
        body = await reviewed_index(ci, "team-b/app", body, child_type, top)
    alice = As(client, basic("alice", PASSWORDS["alice"]))
    resp = await alice.get(f"/v2/team-b/app/blobs/{layer}")
    if levels <= 4:
        assert resp.status == 200 and await resp.read() == b"nested layer"
        return
    assert await denied(resp) == (
        f'rule "team-b images are reviewed": blob {layer} is not part of any image of '
        "team-b/app that may be pulled (only those who may push to it can read it)"
    )
    assert (await ci.get(f"/v2/team-b/app/blobs/{layer}")).status == 200


async def test_a_release_reached_after_an_index_already_seen_still_keeps_its_layer(
    gated: TestClient,  # noqa: F811
) -> None:
    """Two images share a layer; a newer throw-away index holds both, an older release `v1`
    holds one of them. Walking up from the layer meets the throw-away index twice: the second
    time it is skipped and the walk goes on to the release, whose layer cannot be deleted."""
    _, _, layer = await push_image(gated, "app/d", "i", b"diamond layer")
    _, _, same = await push_image(gated, "app/d", "j", b"diamond layer")
    assert same == layer
    first = await (await gated.get("/v2/app/d/manifests/i")).read()
    second = await (await gated.get("/v2/app/d/manifests/j")).read()
    platform = {"os": "linux", "architecture": "amd64"}
    release = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, second, platform=platform)],
    }
    status, release_digest, body = await push_manifest(gated, "app/d", "v1", release, OCI_INDEX)
    assert status == 201, body
    scratch = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            descriptor(OCI_MANIFEST, first, platform=platform),
            descriptor(OCI_MANIFEST, second, platform={**platform, "variant": "v2"}),
        ],
    }
    status, _, body = await push_manifest(gated, "app/d", "scratch", scratch, OCI_INDEX)
    assert status == 201, body
    message = await denied(await gated.delete(f"/v2/app/d/blobs/{layer}"))
    assert message == (
        f"blob {layer} is needed by manifest {release_digest} (v1), which the policy does not "
        f"let be deleted: {immutable(release_digest)}"
    )
    assert (await gated.get(f"/v2/app/d/blobs/{layer}")).status == 200


EXCLUDING_POLICY = """version: 1
rules:
  - name: everything else is small
    match: {repositories: ["**"], on: [pull], exclude: {repositories: ["prod/**"]}}
    require: {max_size: 1GiB}
  - name: prod images are reviewed
    match: {repositories: ["prod/**"], on: [pull]}
    require:
      annotations: {com.example.reviewed: "^yes$"}
"""


async def test_a_rule_excluding_the_repository_does_not_hide_the_rules_after_it(
    start_client: Any, tmp_path: Path
) -> None:
    """The first rule excludes prod/**; the one after it quarantines prod/app's image: its layer
    is refused too, not taken for the layer of a repository no rule concerns."""
    (tmp_path / "policy.yaml").write_text(EXCLUDING_POLICY)
    client = await start_client(policy={"file": str(tmp_path / "policy.yaml"), "reload": False})
    _, _, layer = await push_image(client, "prod/app", "v1", b"excluded then quarantined")
    message = await denied(await client.get(f"/v2/prod/app/blobs/{layer}"))
    assert message == (
        f"blob {layer} is only part of images the policy refuses to pull from prod/app: "
        'rule "prod images are reviewed": manifest annotation com.example.reviewed missing'
    )
