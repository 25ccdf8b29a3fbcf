"""Property tests over the manifest and image-config parsers, through the API: random and mutated
documents never get a 5xx, and every accepted manifest (and every config the policy accepted)
reads the same under the Go-like reader of `tests/security/go_json.py` as under Python's exact
keys.

Hypothesis runs in a worker thread; each example's requests go to the app on the test's loop.
Runs are bounded (`max_examples`, no example database) and derandomized, so the suite stays fast
and every run tries the same documents.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.oci import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, descriptor
from tests.security import go_json
from tests.security.crafted import image_config, push_blobs, put_manifest

BOUNDED = settings(
    max_examples=80,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples every run: a failure is never a fluke
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

LAYER = b"property layer"
LABEL = "org.opencontainers.image.source"
CONFIG = image_config({LABEL: "https://git.example.com/app"})
SPEC_KEYS = [
    "schemaVersion",
    "mediaType",
    "artifactType",
    "config",
    "layers",
    "manifests",
    "subject",
    "annotations",
    "digest",
    "size",
    "urls",
    "platform",
    "architecture",
    "os",
]
MEDIA_TYPES = [OCI_MANIFEST, OCI_INDEX, OCI_CONFIG, OCI_LAYER, "application/json", ""]


def valid_manifest() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, CONFIG),
        "layers": [descriptor(OCI_LAYER, LAYER)],
        "annotations": {"a": "b"},
    }


# -- documents as member lists, so duplicate keys survive serialisation -----------------------


class Obj(list):  # type: ignore[type-arg]
    """An object as its (key, value) members, in order, duplicates kept."""


def render(value: Any) -> str:
    if isinstance(value, Obj):
        return "{" + ", ".join(f"{json.dumps(k)}: {render(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, Raw):
        return value.text
    return json.dumps(value)


class Raw:
    """JSON text inserted as is (NaN, 1e400, a 40-digit integer, deep nesting, escapes)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r})"


def members(value: Any) -> Any:
    if isinstance(value, dict):
        return Obj((k, members(v)) for k, v in value.items())
    if isinstance(value, list):
        return [members(v) for v in value]
    return value


def variants(key: str) -> st.SearchStrategy[str]:
    """`key` or one spelled so Go still reads it as `key`."""
    return st.sampled_from(
        [
            key,
            key.upper(),
            key.capitalize(),
            key.swapcase(),
            key.replace("s", "\u017f"),
            key.replace("k", "\u212a"),
        ]
    )


HOSTILE = st.sampled_from(
    [
        Raw("NaN"),
        Raw("-Infinity"),
        Raw("1e400"),
        Raw("9" * 40),
        Raw("-9223372036854775809"),
        Raw("2.0"),
        Raw('"\\ud800"'),
        Raw('"\\udfff\\ud800"'),
        Raw("[" * 50 + "]" * 50),
        Raw("{" + '"a":{' * 40 + "}" * 41),
        Raw('"\\u0000"'),
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(MEDIA_TYPES),
    HOSTILE,
)
KEYS = st.one_of(st.sampled_from(SPEC_KEYS).flatmap(variants), st.text(max_size=8))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(st.tuples(KEYS, inner), max_size=5).map(Obj),
    ),
    max_leaves=25,
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """The valid manifest with one or two mutations, from key spellings to raw bytes."""
    document: Any = members(valid_manifest())
    for _ in range(draw(st.integers(1, 2))):
        document = draw(_mutation(document))
    text = render(document)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    try:
        content = text.encode(encoding)
    except UnicodeEncodeError:
        content = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()) and content:
        position = draw(st.integers(0, len(content) - 1))
        byte = draw(st.integers(0, 255))
        content = content[:position] + bytes([byte]) + content[position + 1 :]
    return content


def _objects(value: Any, found: list[Obj]) -> list[Obj]:
    if isinstance(value, Obj):
        found.append(value)
        for _, v in value:
            _objects(v, found)
    elif isinstance(value, list):
        for v in value:
            _objects(v, found)
    return found


def _mutation(document: Any) -> st.SearchStrategy[Any]:
    objects = _objects(document, [])

    @st.composite
    def apply(draw: st.DrawFn) -> Any:
        target = draw(st.sampled_from(objects))
        # Spellings and duplicates first: they are what two decoders read differently.
        kind = draw(
            st.sampled_from(
                ["respell", "respell", "duplicate", "duplicate", "insert", "replace", "drop"]
            )
        )
        if kind == "respell" and target:
            index = draw(st.integers(0, len(target) - 1))
            key, value = target[index]
            target[index] = (draw(variants(key)), value)
        elif kind == "duplicate" and target:
            key, value = target[draw(st.integers(0, len(target) - 1))]
            target.append((draw(variants(key)), draw(st.one_of(st.just(value), VALUES))))
        elif kind == "replace" and target:
            index = draw(st.integers(0, len(target) - 1))
            target[index] = (target[index][0], draw(VALUES))
        elif kind == "drop" and target:
            del target[draw(st.integers(0, len(target) - 1))]
        else:
            target.append((draw(KEYS), draw(VALUES)))
        return document

    return apply()


# -- the properties --------------------------------------------------------------------------


def on_loop(loop: asyncio.AbstractEventLoop) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    def call(coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

    return call


async def put_status(client: TestClient, content: bytes, media_type: str) -> int:
    resp = await put_manifest(client, "app/web", "v1", content, media_type)
    await resp.read()
    return resp.status


def same_reading(content: bytes) -> None:
    """An accepted manifest reads the same under Go's rules as under Python's exact keys."""
    go = go_json.read(content, go_json.MANIFEST)
    python = go_json.project(json.loads(content), go_json.MANIFEST)
    assert go == python, (go, python)


async def test_mutated_manifests_never_5xx_and_read_one_way(client: TestClient) -> None:
    await push_blobs(client, "app/web", CONFIG, LAYER)
    call = on_loop(asyncio.get_running_loop())
    accepted: list[int] = []

    @settings(BOUNDED, max_examples=200)
    @given(content=mutated(), media_type=st.sampled_from([OCI_MANIFEST, OCI_INDEX, ""]))
    def prop(content: bytes, media_type: str) -> None:
        status = call(put_status(client, content, media_type))
        assert status < 500, content[:300]
        if status == 201:
            accepted.append(status)
            same_reading(content)

    await asyncio.get_running_loop().run_in_executor(None, prop)
    # The mutations keep many manifests valid: the reading property was really exercised.
    assert accepted


async def test_random_documents_never_5xx_and_read_one_way(client: TestClient) -> None:
    call = on_loop(asyncio.get_running_loop())

    @BOUNDED
    @given(document=VALUES, media_type=st.sampled_from([OCI_MANIFEST, OCI_INDEX, ""]))
    def prop(document: Any, media_type: str) -> None:
        content = render(document).encode("utf-8", "surrogatepass")
        status = call(put_status(client, content, media_type))
        assert status < 500, content[:300]
        if status == 201:
            same_reading(content)

    await asyncio.get_running_loop().run_in_executor(None, prop)


CONFIG_POLICY = f"""\
version: 1
rules:
  - name: provenance
    match: {{repositories: ["app/**"], on: [push]}}
    require:
      labels: {{{LABEL}: "^https://git.example.com/"}}
      platforms: {{allowed: [linux/amd64]}}
"""


@st.composite
def mutated_config(draw: st.DrawFn) -> bytes:
    document = members(json.loads(CONFIG))
    for _ in range(draw(st.integers(1, 2))):
        document = draw(_mutation(document))
    return render(document).encode(draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig"])))


async def test_mutated_configs_never_5xx_and_labels_read_one_way(
    start_client: Any, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(CONFIG_POLICY)
    client = await start_client(policy={"file": str(path), "reload": False})
    await push_blobs(client, "app/web", LAYER)
    call = on_loop(asyncio.get_running_loop())
    accepted: list[int] = []

    async def push(config: bytes) -> int:
        await push_blobs(client, "app/web", config)
        manifest = {**valid_manifest(), "config": descriptor(OCI_CONFIG, config)}
        return await put_status(client, json.dumps(manifest).encode(), OCI_MANIFEST)

    @BOUNDED
    @given(config=mutated_config())
    def prop(config: bytes) -> None:
        status = call(push(config))
        assert status in (201, 403), (status, config[:300])
        if status == 201:
            accepted.append(status)
            go = go_json.read(config, go_json.IMAGE_CONFIG)
            labels = (go.get("config") or {}).get("Labels") or {}
            assert labels.get(LABEL, "").startswith("https://git.example.com/"), go
            assert (go.get("os"), go.get("architecture")) == ("linux", "amd64"), go

    await asyncio.get_running_loop().run_in_executor(None, prop)
    assert accepted


@pytest.mark.parametrize(
    "content",
    [b"", b"null", b"[]", b'"x"', b"{", b"\xff\xfe", b"{}" * 1000, b"[" * 200_000],
    ids=["empty", "null", "array", "string", "truncated", "UTF-16 BOM", "trailing", "deep"],
)
async def test_degenerate_bodies_get_4xx(client: TestClient, content: bytes) -> None:
    status = await put_status(client, content, OCI_MANIFEST)
    assert status == 400
