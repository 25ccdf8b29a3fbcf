"""Pushes and deletes racing once a push holds no lock of the database.

A push to a tag re-checks the tag inside its own transaction (`TagPremise`) instead of waiting
for a lock another process holds. So a change decided on what the repository held must re-check
it inside its own transaction too: a delete by digest (every tag pointing at the manifest, the
releases listing it) and a blob delete (the releases made of it) read the repository's evidence
version before deciding and delete only while it is unchanged; a tag delete only while the tag
points where it was decided on. And a push decided on a view that moves is decided again (its
tag: 5 times, then 429) or refused (a child deleted: MANIFEST_BLOB_UNKNOWN). Each race is held
at the right moment by the test (no sleeps); "another process" is a write straight to the
database where the in-process guard would serialize two requests. Run on the backend the suite
runs (`TRUSTYARD_TEST_METADATA`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from policies.gateway import PolicyGate
from registry.context import CONTEXT
from tests.oci import OCI_INDEX, OCI_MANIFEST, descriptor, error_codes, push_image, sha256
from tests.security.test_delete_tag_races import PATIENCE, immutable_release_client


async def test_a_release_tag_pushed_while_a_delete_by_digest_is_decided_is_not_deleted(
    start_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete holds the guard of `dev` and is deciding on `dev` alone when a push tags the
    same manifest `v1` (its own guard, free): the delete must not then remove `v1` with it."""
    client = await immutable_release_client(start_client, tmp_path)
    digest, body = await push_image(client, "app/web", "dev")
    real = PolicyGate.check_delete
    deciding, tagged = asyncio.Event(), asyncio.Event()
    decided: list[tuple[str, ...]] = []

    async def held(self: PolicyGate, request: Any, record: Any) -> dict[str, str]:
        decided.append(request.tags)
        if len(decided) == 1:
            deciding.set()
            await tagged.wait()
        return await real(self, request, record)

    monkeypatch.setattr(PolicyGate, "check_delete", held)
    deleting = asyncio.ensure_future(client.delete(f"/v2/app/web/manifests/{digest}"))
    await asyncio.wait_for(deciding.wait(), PATIENCE)
    resp = await client.put(
        "/v2/app/web/manifests/v1", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 201, await resp.text()
    tagged.set()
    resp = await asyncio.wait_for(deleting, PATIENCE)
    assert resp.status == 403, await resp.text()
    answer = await resp.json()
    assert error_codes(answer) == ["DENIED"]
    assert answer["errors"][0]["message"] == (
        'rule "release tags are immutable": tag v1 is immutable and cannot be deleted '
        f"(it points to {digest[:19]}…)"
    )
    # Decided first on `dev`, then again on the tags the manifest had when it was deleted.
    assert decided == [("dev",), ("dev", "v1")]
    for tag in ("v1", "dev"):
        got = await client.get(f"/v2/app/web/manifests/{tag}")
        assert (got.status, got.headers.get("Docker-Content-Digest")) == (200, digest), tag


async def _held_after_check_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[asyncio.Event, asyncio.Event, list[str]]:
    """Hold the first `check_needed` once it has decided (the delete then goes on to commit)
    until the test sets the second event; the digests checked are listed."""
    real = PolicyGate.check_needed
    checked, release = asyncio.Event(), asyncio.Event()
    seen: list[str] = []

    async def held(self: PolicyGate, repository: str, digest: str, kind: str, who: str) -> None:
        seen.append(digest)
        await real(self, repository, digest, kind, who)
        if len(seen) == 1:
            checked.set()
            await release.wait()

    monkeypatch.setattr(PolicyGate, "check_needed", held)
    return checked, release, seen


async def _delete_refused_after_a_release_is_pushed(
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    push_release: Callable[[], Awaitable[str]],
) -> tuple[str, str, list[str]]:
    """DELETE `path`, held once its check found nothing needing it while `push_release` pushes
    a release that needs it; the delete must then be refused (403 DENIED). Its message, the
    release's digest and the digests checked."""
    checked, release, seen = await _held_after_check_needed(monkeypatch)
    deleting = asyncio.ensure_future(client.delete(path))
    await asyncio.wait_for(checked.wait(), PATIENCE)
    pushed = await push_release()
    release.set()
    resp = await asyncio.wait_for(deleting, PATIENCE)
    assert resp.status == 403, await resp.text()
    answer = await resp.json()
    assert error_codes(answer) == ["DENIED"]
    return answer["errors"][0]["message"], pushed, seen


async def _index_over(client: TestClient, child: str, tag: str) -> str:
    """Push an index listing the manifest `child` of app/web as `tag`; its digest."""
    child_body = await (await client.get(f"/v2/app/web/manifests/{child}")).read()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor(OCI_MANIFEST, child_body)],
        }
    ).encode()
    resp = await client.put(
        f"/v2/app/web/manifests/{tag}", data=index, headers={"Content-Type": OCI_INDEX}
    )
    assert resp.status == 201, await resp.text()
    return sha256(index)


async def test_an_immutable_index_pushed_while_its_child_is_deleted_keeps_the_child(
    start_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete of an untagged image found nothing needing it; before it commits, a release
    index listing the image is pushed (201). The delete must not take the release's child."""
    client = await immutable_release_client(start_client, tmp_path)
    child, _ = await push_image(client, "app/web", "tmp")
    resp = await client.delete("/v2/app/web/manifests/tmp")
    assert resp.status == 202, await resp.text()
    message, index, seen = await _delete_refused_after_a_release_is_pushed(
        client,
        monkeypatch,
        f"/v2/app/web/manifests/{child}",
        lambda: _index_over(client, child, "v1"),
    )
    assert message == (
        f"manifest {child} is needed by manifest {index} (v1), which the policy does not let "
        'be deleted: rule "release tags are immutable": tag v1 is immutable and cannot be '
        f"deleted (it points to {index[:19]}…)"
    )
    assert seen == [child, child]  # decided again once the index was there
    got = await client.get(f"/v2/app/web/manifests/{child}")
    assert got.status == 200, await got.text()


async def test_an_immutable_image_pushed_while_its_layer_is_deleted_keeps_the_layer(
    start_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete of a layer no manifest needs any more, raced by the push of a release image
    made of it: the release keeps its layer."""
    client = await immutable_release_client(start_client, tmp_path)
    layer = b"a layer the release is made of"
    await push_image(client, "app/web", "tmp", layers=[layer])
    resp = await client.delete("/v2/app/web/manifests/tmp")
    assert resp.status == 202, await resp.text()

    async def release_image() -> str:
        return (await push_image(client, "app/web", "v1", layers=[layer]))[0]

    message, image, seen = await _delete_refused_after_a_release_is_pushed(
        client, monkeypatch, f"/v2/app/web/blobs/{sha256(layer)}", release_image
    )
    assert message == (
        f"blob {sha256(layer)} is needed by manifest {image} (v1), which the policy does not "
        'let be deleted: rule "release tags are immutable": tag v1 is immutable and cannot be '
        f"deleted (it points to {image[:19]}…)"
    )
    assert seen == [sha256(layer), sha256(layer)]
    got = await client.get(f"/v2/app/web/blobs/{sha256(layer)}")
    assert (got.status, await got.read()) == (200, layer)


@pytest.mark.parametrize("what", ["manifest", "blob"])
async def test_a_delete_in_a_repository_that_keeps_changing_is_refused_after_three_rounds(
    start_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """Every time the delete has decided, another push lands in the repository: decided again
    at most three times, then 429 with nothing deleted (the client retries)."""
    client = await immutable_release_client(start_client, tmp_path)
    layer = b"a layer nothing needs any more"
    digest, _ = await push_image(client, "app/web", "tmp", layers=[layer])
    resp = await client.delete("/v2/app/web/manifests/tmp")
    assert resp.status == 202, await resp.text()
    target = digest if what == "manifest" else sha256(layer)
    real = PolicyGate.check_needed
    rounds: list[str] = []

    async def churned(self: PolicyGate, repository: str, checked: str, kind: str, who: str) -> None:
        await real(self, repository, checked, kind, who)
        rounds.append(checked)
        await push_image(client, "app/web", f"dev{len(rounds)}", layers=[b"other"])

    monkeypatch.setattr(PolicyGate, "check_needed", churned)
    resp = await client.delete(f"/v2/app/web/{what}s/{target}")
    assert resp.status == 429, await resp.text()
    answer = await resp.json()
    assert error_codes(answer) == ["TOOMANYREQUESTS"]
    kind = "" if what == "manifest" else "blob "
    assert answer["errors"][0]["message"] == (
        f"app/web keeps changing while {kind}{target} is deleted; retry"
    )
    assert rounds == [target] * 3
    monkeypatch.setattr(PolicyGate, "check_needed", real)
    got = await client.get(f"/v2/app/web/{what}s/{target}")
    assert got.status == 200, await got.text()


async def test_a_push_whose_tag_keeps_moving_is_refused_after_five_attempts(
    start_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process (here: writes straight to the database, which wait for no guard of this
    one) moves the tag after every decision: first creating it, then deleting it, so that no
    decision is a denial. The push is decided at most five times, then 429, and the tag is as
    the other process left it."""
    client = await immutable_release_client(start_client, tmp_path)
    digest, body = await push_image(client, "app/web", "dev")
    db = client.server.app[CONTEXT].db
    record = await db.get_manifest("app/web", digest)
    assert record is not None
    real = PolicyGate.check_push
    decided: list[str | None] = []

    async def overtaken(
        self: PolicyGate, request: Any, media_type: str, content: bytes, **premises: Any
    ) -> Any:
        check = await real(self, request, media_type, content, **premises)
        decided.append(check.tag_targets.get("v1"))
        if await db.tag_target("app/web", "v1") is None:
            await db.put_manifest(record, [], "v1")
        else:
            assert await db.delete_tag("app/web", "v1")
        return check

    monkeypatch.setattr(PolicyGate, "check_push", overtaken)
    resp = await client.put(
        "/v2/app/web/manifests/v1", data=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert resp.status == 429, await resp.text()
    answer = await resp.json()
    assert error_codes(answer) == ["TOOMANYREQUESTS"]
    assert answer["errors"][0]["message"] == (
        "tag v1 keeps being moved by other pushes while this one is decided; nothing was "
        "stored, try again"
    )
    assert decided == [None, digest, None, digest, None]
    assert await db.tag_target("app/web", "v1") == digest  # the other process's last move


async def test_an_index_whose_child_is_deleted_while_it_is_decided_is_not_stored(
    start_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index's decision read its child; the child is deleted (by digest: no guard of the
    push's tag) before the index's transaction: nothing is stored, 400 MANIFEST_BLOB_UNKNOWN
    naming the child (on PostgreSQL the batch expected the child, found it gone and was run
    again reading the real rows)."""
    client = await immutable_release_client(start_client, tmp_path)
    child, _ = await push_image(client, "app/web", "tmp")
    resp = await client.delete("/v2/app/web/manifests/tmp")
    assert resp.status == 202, await resp.text()
    child_body = await (await client.get(f"/v2/app/web/manifests/{child}")).read()
    real = PolicyGate.check_push

    async def child_deleted(
        self: PolicyGate, request: Any, media_type: str, content: bytes, **premises: Any
    ) -> Any:
        check = await real(self, request, media_type, content, **premises)
        gone = await client.delete(f"/v2/app/web/manifests/{child}")
        assert gone.status == 202, await gone.text()
        return check

    monkeypatch.setattr(PolicyGate, "check_push", child_deleted)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor(OCI_MANIFEST, child_body)],
        }
    ).encode()
    resp = await client.put(
        "/v2/app/web/manifests/v1", data=index, headers={"Content-Type": OCI_INDEX}
    )
    assert resp.status == 400, await resp.text()
    answer = await resp.json()
    assert error_codes(answer) == ["MANIFEST_BLOB_UNKNOWN"]
    assert answer["errors"][0]["message"] == (
        f"manifest references manifest {child} unknown to repository app/web"
    )
    for reference in ("v1", sha256(index)):
        got = await client.get(f"/v2/app/web/manifests/{reference}")
        assert got.status == 404, reference


async def test_a_tag_moved_by_another_process_while_its_delete_is_decided_stays(
    start_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete of `dev` decided on the manifest `dev` named; another process (a push there
    waits for no guard of this one: here a write straight to the database) moves `dev` before
    the delete commits. The tag it moved to was never decided on: it stays, and the delete is
    answered as one whose target went (404 MANIFEST_UNKNOWN)."""
    client = await immutable_release_client(start_client, tmp_path)
    old, _ = await push_image(client, "app/web", "dev")
    new, _ = await push_image(client, "app/web", "next", layers=[b"the new image"])
    db = client.server.app[CONTEXT].db
    moved_to = await db.get_manifest("app/web", new)
    assert moved_to is not None
    real = PolicyGate.check_delete

    async def overtaken(self: PolicyGate, request: Any, record: Any) -> dict[str, str]:
        headers = await real(self, request, record)
        assert record.digest == old
        await db.put_manifest(moved_to, [], "dev")
        return headers

    monkeypatch.setattr(PolicyGate, "check_delete", overtaken)
    resp = await client.delete("/v2/app/web/manifests/dev")
    assert resp.status == 404, await resp.text()
    assert error_codes(await resp.json()) == ["MANIFEST_UNKNOWN"]
    assert await db.tag_target("app/web", "dev") == new
