"""Prefix matching: the nearest library base wins, by diff_ids, per platform."""

from __future__ import annotations

import hashlib

from policies.library.lineage import (
    EMPTY_DIFF_ID,
    EMPTY_LAYER_DIGEST,
    Candidate,
    ImageLayers,
    find_base,
    find_lineage,
    is_built_on,
    shared_prefix,
)


def d(text: str) -> str:
    """A digest standing for `text`."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def image(
    name: str,
    diff_ids: list[str] | None,
    layers: list[str] | None = None,
    platform: str | None = "linux/amd64",
) -> ImageLayers:
    """An image whose layers are named `gz:<diff_id>` unless given."""
    layers = layers if layers is not None else [f"gz:{x}" for x in diff_ids or []]
    return ImageLayers(
        d(name), platform, tuple(layers), None if diff_ids is None else tuple(diff_ids)
    )


def candidate(
    ref: str, layers: ImageLayers, *, current: bool = True, since: float = 0.0
) -> Candidate:
    name, tag = ref.split(":")
    return Candidate(
        name,
        tag,
        f"library/{name}",
        d(ref + str(since)),
        layers,
        current,
        since,
        None if current else since + 10,
    )


DISTROLESS = image("distroless", ["s1"])
PYTHON = image("python", ["s1", "p1", "p2"])


def test_the_longest_prefix_wins_for_a_base_built_on_another_library_image() -> None:
    app = image("app", ["s1", "p1", "p2", "a1"])
    lineage = find_base(
        app, [candidate("distroless/static:nonroot", DISTROLESS), candidate("python:3.12", PYTHON)]
    )
    assert lineage.base is not None and lineage.base.reference == "python:3.12"
    assert lineage.shared == 3
    # An image directly on distroless is not taken for a python image.
    other = image("other", ["s1", "x1"])
    lineage = find_base(
        other,
        [candidate("python:3.12", PYTHON), candidate("distroless/static:nonroot", DISTROLESS)],
    )
    assert lineage.base is not None and lineage.base.name == "distroless/static"


def test_recompressed_layers_match_by_diff_ids() -> None:
    app = image("app", ["s1", "p1", "p2", "a1"], layers=["zstd1", "zstd2", "zstd3", "zstd4"])
    assert shared_prefix(PYTHON, app) == 3
    assert find_base(app, [candidate("python:3.12", PYTHON)]).base is not None


def test_layer_digests_are_the_fallback_without_configs() -> None:
    base = image("base", None, layers=["l1", "l2"])
    assert is_built_on(base, image("app", None, layers=["l1", "l2", "l3"]))
    assert not is_built_on(base, image("app2", None, layers=["l1", "x2", "l3"]))
    # One side without a config: the layer digests are compared.
    assert is_built_on(base, image("app3", ["a", "b", "c"], layers=["l1", "l2", "l3"]))


def test_empty_layers_are_ignored_on_both_sides() -> None:
    base = image("base", ["s1", EMPTY_DIFF_ID, "p1"])
    app = image("app", ["s1", "p1", EMPTY_DIFF_ID, "a1"])
    assert is_built_on(base, app)
    assert is_built_on(
        image("b", None, layers=["l1", EMPTY_LAYER_DIGEST]), image("a", None, layers=["l1", "l2"])
    )
    # A base of nothing but empty layers is no base at all (every image would match it).
    assert not is_built_on(image("empty", [EMPTY_DIFF_ID]), app)
    assert not is_built_on(image("scratch", []), app)


def test_an_image_identical_to_its_base_is_built_on_it() -> None:
    assert find_base(image("same", ["s1", "p1", "p2"]), [candidate("python:3.12", PYTHON)]).base


def test_platforms_must_agree() -> None:
    arm = image("python-arm", ["s1", "p1", "p2"], platform="linux/arm64")
    app = image("app", ["s1", "p1", "p2", "a1"], platform="linux/amd64")
    assert not is_built_on(arm, app)
    assert is_built_on(image("unknown", ["s1"], platform=None), app)


def test_an_index_is_matched_per_platform() -> None:
    amd = image("py-amd", ["s1", "p1"], platform="linux/amd64")
    arm = image("py-arm", ["t1", "q1"], platform="linux/arm64")
    candidates = [candidate("python:3.12", amd), candidate("python:3.12", arm)]
    app_amd = image("app-amd", ["s1", "p1", "a1"], platform="linux/amd64")
    app_arm = image("app-arm", ["t1", "q1", "a1"], platform="linux/arm64")
    app_s390 = image("app-s390", ["u1", "a1"], platform="linux/s390x")
    found = find_lineage([app_amd, app_arm, app_s390], candidates)
    assert [(x.platform, x.base.image.digest if x.base else None) for x in found] == [
        ("linux/amd64", amd.digest),
        ("linux/arm64", arm.digest),
        ("linux/s390x", None),
    ]


def test_a_current_digest_wins_over_a_replaced_one_with_the_same_layers() -> None:
    old = candidate("python:3.12", PYTHON, current=False, since=1.0)
    new = candidate("python:3.12", PYTHON, current=True, since=2.0)
    assert find_base(image("app", ["s1", "p1", "p2", "a"]), [old, new]).base == new
    # A replaced digest is still a base (the rule decides whether it is too old).
    assert find_base(image("app", ["s1", "p1", "p2", "a"]), [old]).base == old


def test_without_a_base_the_closest_candidate_is_named() -> None:
    app = image("app", ["s1", "z1", "z2"])
    lineage = find_base(
        app, [candidate("python:3.12", PYTHON), candidate("x:1", image("x", ["y"]))]
    )
    assert lineage.base is None
    assert lineage.closest is not None and lineage.closest.reference == "python:3.12"
    assert lineage.shared == 1
    scratch = find_base(image("scratch", ["q"]), [candidate("python:3.12", PYTHON)])
    assert scratch.base is None and scratch.shared == 0
    assert scratch.closest is not None and scratch.closest.name == "python"
    assert find_base(app, []).closest is None
