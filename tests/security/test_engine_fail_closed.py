"""The engine fails closed: what it could not learn denies with the reason, a rule that requires
nothing is refused when the policy is loaded, and a request no rule matches gets the policy's
`default:` decision."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from policies.decisions import Action, Outcome, RuleVerdict
from policies.facts import MAX_CHILDREN, PolicyRequest
from policies.gateway import startup_policy
from policies.loader import PolicyError, parse_policy
from registry.context import CONTEXT
from registry.policy_commands import check_policy
from tests.oci import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    error_codes,
)
from tests.security.crafted import image_config, push_blobs, put_manifest

TERABYTE = 10**12
AMD64 = {"os": "linux", "architecture": "amd64"}


def policy_text(require: str, on: str = "push", extra: str = "") -> str:
    return (
        "version: 1\n"
        + extra
        + "rules:\n"
        + "  - name: guarded\n"
        + f'    match: {{repositories: ["app/**"], on: [{on}]}}\n'
        + f"    require: {require}\n"
    )


@pytest.fixture
async def registry(start_client: Any, tmp_path: Path) -> Any:
    """A registry whose policy each test sets with `use(text)`."""
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nrules: []\n")
    client = await start_client(policy={"file": str(path), "reload": False})

    def use(text: str) -> TestClient:
        client.server.app[CONTEXT].policy.policy = parse_policy(text)
        return client

    return use


async def push_child(
    client: TestClient, name: str, layer_size: int, *, config: bytes | None = None, tag: str = ""
) -> bytes:
    """An image manifest whose one layer claims `layer_size` bytes (sizes are not checked
    against blobs: the descriptor is what clients trust); returns the manifest bytes."""
    gate = client.server.app[CONTEXT].policy
    policy, gate.policy = gate.policy, parse_policy("version: 1\nrules: []\n")
    config = config if config is not None else image_config()
    layer = b"layer-" + str(layer_size).encode() + tag.encode()
    await push_blobs(client, name, config, layer)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [{**descriptor(OCI_LAYER, layer), "size": layer_size}],
    }
    content = json.dumps(manifest).encode()
    digest = descriptor(OCI_MANIFEST, content)["digest"]
    resp = await put_manifest(client, name, digest, content)
    assert resp.status == 201, await resp.text()
    gate.policy = policy
    return content


async def one_layer_image(client: TestClient, config: bytes, layer: bytes) -> dict[str, Any]:
    """An image manifest of `config` and one `layer`, its blobs pushed to app/web."""
    await push_blobs(client, "app/web", config, layer)
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer)],
    }


def index_of(*children: bytes, platforms: bool = True) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            descriptor(OCI_MANIFEST, child, **({"platform": AMD64} if platforms else {}))
            for child in children
        ],
    }


async def assert_push_denied(
    client: TestClient, document: dict[str, Any] | bytes, reason: str, media_type: str
) -> None:
    resp = await put_manifest(client, "app/web", "v1", document, media_type)
    assert resp.status == 403, await resp.text()
    body = await resp.json()
    assert error_codes(body) == ["DENIED"]
    assert body["errors"][0]["message"] == f'rule "guarded": {reason}'


# -- what the engine could not learn denies -----------------------------------------------------


async def test_an_index_with_more_children_than_judged_is_denied(registry: Any) -> None:
    client = registry(policy_text("{max_size: 1MiB}"))
    small = await push_child(client, "app/web", 10)
    children = [small] * MAX_CHILDREN + [await push_child(client, "app/web", TERABYTE)]
    await assert_push_denied(
        client,
        index_of(*children),
        f"cannot be judged: the index has {MAX_CHILDREN + 1} child manifests; at most "
        f"{MAX_CHILDREN} are judged",
        OCI_INDEX,
    )


async def test_an_index_with_as_many_children_as_judged_is_judged_to_its_last_child(
    registry: Any,
) -> None:
    """The limit is inclusive: an index of exactly MAX_CHILDREN children is judged, each of
    them (the last one too), not refused as too large to judge."""
    client = registry(policy_text("{max_size: 1MiB}"))
    small = await push_child(client, "app/web", 10)
    children = [small] * (MAX_CHILDREN - 1) + [await push_child(client, "app/web", TERABYTE)]
    await assert_push_denied(
        client,
        index_of(*children),
        "image (linux/amd64) is 931.3 GiB, over the 1.0 MiB limit",
        OCI_INDEX,
    )


async def test_a_large_child_within_the_limit_count_is_still_caught(registry: Any) -> None:
    client = registry(policy_text("{max_size: 1MiB}"))
    big = await push_child(client, "app/web", TERABYTE)
    await assert_push_denied(
        client, index_of(big), "image (linux/amd64) is 931.3 GiB, over the 1.0 MiB limit", OCI_INDEX
    )


async def test_a_nested_index_is_not_judged_as_empty(registry: Any) -> None:
    client = registry(policy_text("{max_size: 1MiB}"))
    big = await push_child(client, "app/web", TERABYTE)
    inner = json.dumps(index_of(big)).encode()
    inner_digest = descriptor(OCI_INDEX, inner)["digest"]
    client.server.app[CONTEXT].policy.policy = parse_policy("version: 1\nrules: []\n")
    assert (await put_manifest(client, "app/web", inner_digest, inner, OCI_INDEX)).status == 201
    client = registry(policy_text("{max_size: 1MiB}"))
    outer = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_INDEX, inner, platform=AMD64)],
    }
    await assert_push_denied(
        client,
        outer,
        "cannot be judged: child linux/amd64 is itself an index; nested indexes are not judged",
        OCI_INDEX,
    )


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (b"not json", "cannot be judged: image config is not valid JSON"),
        (b'{"os": "linux"}', "declares no platform"),
    ],
    ids=["unreadable config", "config without architecture"],
)
async def test_a_platform_rule_denies_what_it_cannot_read(
    registry: Any, config: bytes, reason: str
) -> None:
    client = registry(policy_text("{platforms: {allowed: [linux/amd64]}}"))
    layer = b"some layer"
    manifest = await one_layer_image(client, config, layer)
    resp = await put_manifest(client, "app/web", "v1", manifest)
    assert resp.status == 403
    message = (await resp.json())["errors"][0]["message"]
    assert message.startswith('rule "guarded": ')
    assert reason in message


async def test_an_oversized_config_denies_labels_and_platforms(registry: Any) -> None:
    client = registry(policy_text("{platforms: {allowed: [linux/amd64]}}"))
    config = image_config(padding="x" * (8 * 1024 * 1024))
    layer = b"layer"
    manifest = await one_layer_image(client, config, layer)
    await assert_push_denied(
        client,
        manifest,
        "cannot be judged: the image config is larger than 8388608 bytes",
        OCI_MANIFEST,
    )


async def test_a_config_of_exactly_the_limit_is_read_and_judged(registry: Any) -> None:
    """The limit is inclusive: a config of exactly MAX_CONFIG_SIZE bytes is read and judged."""
    client = registry(policy_text("{platforms: {allowed: [linux/amd64]}}"))
    limit = 8 * 1024 * 1024
    config = image_config(padding="")
    config = image_config(padding="x" * (limit - len(config)))
    assert len(config) == limit
    layer = b"layer"
    manifest = await one_layer_image(client, config, layer)
    resp = await put_manifest(client, "app/web", "v1", manifest)
    assert resp.status == 201, await resp.text()


async def test_a_config_declared_larger_than_the_limit_is_refused_unread(registry: Any) -> None:
    """The descriptor's size is what clients trust: a config declared over the limit is not
    judged by whatever smaller blob sits under its digest (no client could fetch it whole)."""
    client = registry(policy_text("{platforms: {allowed: [linux/amd64]}}"))
    config = image_config()
    layer = b"layer"
    manifest = await one_layer_image(client, config, layer)
    manifest["config"] = {**manifest["config"], "size": 8 * 1024 * 1024 + 1}
    await assert_push_denied(
        client,
        manifest,
        "cannot be judged: the image config is larger than 8388608 bytes",
        OCI_MANIFEST,
    )


async def test_a_config_judged_once_is_not_taken_for_one_declared_too_large(
    registry: Any,
) -> None:
    """A config already read and judged (remembered under its digest) does not let a later
    manifest that declares it larger than the limit through: the declared size is checked
    before anything remembered."""
    client = registry(policy_text("{platforms: {allowed: [linux/amd64]}}"))
    config = image_config(padding="judged once")
    layer = b"layer"
    honest = await one_layer_image(client, config, layer)
    resp = await put_manifest(client, "app/web", "v1", honest)
    assert resp.status == 201, await resp.text()
    await assert_push_denied(
        client,
        {**honest, "config": {**descriptor(OCI_CONFIG, config), "size": 8 * 1024 * 1024 + 1}},
        "cannot be judged: the image config is larger than 8388608 bytes",
        OCI_MANIFEST,
    )


async def test_an_index_child_without_platform_is_judged_by_its_config(registry: Any) -> None:
    client = registry(policy_text("{platforms: {allowed: [linux/amd64]}}"))
    s390x = await push_child(client, "app/web", 10, config=image_config(architecture="s390x"))
    await assert_push_denied(
        client,
        index_of(s390x, platforms=False),
        "platform linux/s390x is not allowed (allowed: linux/amd64)",
        OCI_INDEX,
    )


async def test_an_index_child_listed_under_another_platform_is_denied(registry: Any) -> None:
    """The index says linux/amd64, the child's config says linux/s390x: clients select by the
    index and run the child, so an allowed platform cannot hide a disallowed one."""
    client = registry(policy_text("{platforms: {allowed: [linux/amd64]}}"))
    s390x = await push_child(client, "app/web", 10, config=image_config(architecture="s390x"))
    digest = descriptor(OCI_MANIFEST, s390x)["digest"]
    await assert_push_denied(
        client,
        index_of(s390x),
        f"child {digest[:19]}… is listed as linux/amd64 but its config says linux/s390x",
        OCI_INDEX,
    )


async def test_an_attestation_child_is_not_judged_as_an_image(registry: Any) -> None:
    client = registry(policy_text("{max_size: 1MiB, platforms: {allowed: [linux/amd64]}}"))
    image = await push_child(client, "app/web", 10)
    statement, config = b'{"_type": "https://in-toto.io/Statement/v1"}', b"{}"
    await push_blobs(client, "app/web", statement, config)
    attestation = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor("application/vnd.in-toto+json", statement)],
        }
    ).encode()
    digest = descriptor(OCI_MANIFEST, attestation)["digest"]
    assert (await put_manifest(client, "app/web", digest, attestation)).status == 201
    index = index_of(image)
    index["manifests"].append(
        descriptor(OCI_MANIFEST, attestation, platform={"os": "unknown", "architecture": "x"})
    )
    resp = await put_manifest(client, "app/web", "v1", index, OCI_INDEX)
    assert resp.status == 201, await resp.text()


async def test_a_stored_manifest_that_reads_two_ways_is_denied(registry: Any) -> None:
    """Manifests stored before the stricter parsing are judged with it: never allowed."""
    client = registry(policy_text("{max_size: 1MiB}", on="pull"))
    gate = client.server.app[CONTEXT].policy
    smuggled = (
        b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "layers": [], '
        b'"Layers": [{"size": 1000000000000}], "config": {}}'
    )
    request = PolicyRequest(Action.PULL, "app/web", "v1", "sha256:" + "0" * 64, ("v1",))
    verdict = await gate.evaluate(request, OCI_MANIFEST, smuggled)
    assert verdict.outcome is Outcome.DENY
    assert verdict.reason.startswith('rule "guarded": cannot be judged: manifest has the key')


# -- rules that require nothing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("require", "message"),
    [
        ("{immutable_tags: false}", "false requires nothing; leave immutable_tags out"),
        ("{labels: {}}", "an empty labels: requires nothing"),
        ("{annotations: {}}", "an empty annotations: requires nothing"),
    ],
)
def test_a_rule_that_requires_nothing_is_refused(
    tmp_path: Path, capsys: Any, require: str, message: str
) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy(policy_text(require))
    assert message in str(refused.value)
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(require))
    assert check_policy(path, io.StringIO()) == 1
    assert message in capsys.readouterr().err


def test_a_base_image_rule_that_checks_nothing_is_refused() -> None:
    library = "library:\n  images:\n    - {name: python, tags: ['3.12']}\n"
    with pytest.raises(PolicyError) as refused:
        parse_policy(policy_text("{base_image: {from_library: false}}", extra=library))
    assert "requires nothing (from_library: false" in str(refused.value)


def test_a_verdict_with_no_decision_does_not_hold() -> None:
    assert not RuleVerdict("empty", "enforce", ()).held


# -- the default decision ----------------------------------------------------------------------

UNMATCHED = (
    "version: 1\n{default}rules:\n  - name: other\n"
    '    match: {{repositories: ["other/**"], on: [pull]}}\n'
    "    require: {{max_size: 1MiB}}\n"
)


@pytest.mark.parametrize(
    ("default", "status"), [("", 200), ("default: allow\n", 200), ("default: deny\n", 403)]
)
async def test_the_default_decides_unmatched_requests(
    registry: Any, default: str, status: int
) -> None:
    client = registry("version: 1\nrules: []\n")
    await push_child(client, "app/web", 10)
    config = image_config()
    layer = b"unmatched"
    manifest = await one_layer_image(client, config, layer)
    assert (await put_manifest(client, "app/web", "v1", manifest)).status == 201
    client = registry(UNMATCHED.format(default=default))
    resp = await client.get("/v2/app/web/manifests/v1")
    assert resp.status == status
    if status == 403:
        body = await resp.json()
        assert body["errors"][0]["message"] == (
            'rule "default": no rule matches this request and the policy\'s default is deny'
        )


def test_the_default_is_shown_at_start_up(tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(UNMATCHED.format(default="default: deny\n"))
    with caplog.at_level(logging.INFO, logger="trustyard.policy"):
        startup_policy(path)
    assert "default: deny (a request no rule matches is refused)" in caplog.text
    path.write_text(UNMATCHED.format(default=""))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trustyard.policy"):
        startup_policy(path)
    assert "default: allow (a request no rule matches is allowed" in caplog.text


def test_policy_check_shows_the_default(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(UNMATCHED.format(default="default: deny\n"))
    out = io.StringIO()
    assert check_policy(path, out) == 0
    assert "default: deny" in out.getvalue()
