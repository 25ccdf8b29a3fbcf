"""A Go-like reading of manifests and image configs, written for the tests (independent of the
registry's own decoder): what docker, containerd, skopeo and cosign see in the same bytes.

It follows `encoding/json` as those clients use it:
* an object decoded into a struct matches each key to a field exactly or, failing that,
  case-insensitively (`bytes.EqualFold`: Unicode simple folding, so U+212A KELVIN SIGN is `k`
  and U+017F LONG S is `s`); unknown keys are dropped; of two keys filling one field the last
  wins, and a nested struct is decoded *into* the value already there (fields merge);
* a map keeps every key as written, the last duplicate winning;
* invalid UTF-8 and lone surrogate escapes become U+FFFD; NaN, Infinity and a byte-order mark
  are syntax errors; an int64 field refuses fractions and values out of range.

`read(content, shape)` returns the struct as a plain dict of the fields Go filled, or raises
`GoError` where Go's decoder fails.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

# A shape: {"field": None (scalar / map / untyped), ("struct", shape), ("list", shape), "int"}
PLATFORM: dict[str, Any] = {
    "architecture": None,
    "os": None,
    "os.version": None,
    "os.features": None,
    "variant": None,
    "features": None,
}
DESCRIPTOR: dict[str, Any] = {
    "mediaType": None,
    "digest": None,
    "size": "int",
    "urls": None,
    "annotations": None,
    "data": None,
    "artifactType": None,
    "platform": ("struct", PLATFORM),
}
MANIFEST: dict[str, Any] = {
    "schemaVersion": "int",
    "mediaType": None,
    "artifactType": None,
    "config": ("struct", DESCRIPTOR),
    "layers": ("list", DESCRIPTOR),
    "manifests": ("list", DESCRIPTOR),
    "subject": ("struct", DESCRIPTOR),
    "annotations": None,
}
IMAGE_CONFIG: dict[str, Any] = {
    "architecture": None,
    "os": None,
    "variant": None,
    "config": ("struct", {"Labels": None, "Env": None, "Cmd": None, "Entrypoint": None}),
}


class GoError(ValueError):
    """Go's decoder would fail on these bytes."""


def _simple_fold(text: str) -> str:
    # Go's EqualFold over the characters that can fold onto the ASCII field names.
    return text.replace("\u212a", "k").replace("\u017f", "s").lower()


def _fix_string(text: str) -> str:
    out = []
    for char in text:
        out.append("\ufffd" if unicodedata.category(char) == "Cs" else char)
    return "".join(out)


def _pairs(content: bytes) -> Any:
    if content.startswith(b"\xef\xbb\xbf"):
        raise GoError("invalid character 'ï' looking for beginning of value")
    text = content.decode("utf-8", "replace")

    def constant(name: str) -> Any:
        raise GoError(f"invalid character in {name}")

    try:
        return json.loads(
            text,
            object_pairs_hook=lambda pairs: ("object", pairs),
            parse_constant=constant,
            parse_int=lambda s: ("number", s),
            parse_float=lambda s: ("number", s),
        )
    except json.JSONDecodeError as exc:
        raise GoError(str(exc)) from None
    except RecursionError:
        raise GoError("exceeded max depth") from None


def _plain(node: Any) -> Any:
    """An untyped value (Go's interface{} / map[string]string): maps keep exact keys."""
    if isinstance(node, tuple) and node[0] == "object":
        result: dict[str, Any] = {}
        for key, value in node[1]:
            result[_fix_string(key)] = _plain(value)
        return result
    if isinstance(node, tuple) and node[0] == "number":
        value = float(node[1])
        if value in (float("inf"), float("-inf")):
            raise GoError(f"number {node[1][:20]} out of range")
        return value
    if isinstance(node, list):
        return [_plain(item) for item in node]
    if isinstance(node, str):
        return _fix_string(node)
    return node


def _int(node: Any) -> int:
    if not (isinstance(node, tuple) and node[0] == "number"):
        raise GoError("cannot unmarshal non-number into int")
    text = node[1]
    if any(c in text for c in ".eE"):
        raise GoError(f"cannot unmarshal number {text[:20]} into int64")
    if len(text.lstrip("-")) > 19 or not -(2**63) <= int(text) < 2**63:
        raise GoError(f"number {text[:20]} overflows int64")
    return int(text)


def _struct(node: Any, shape: dict[str, Any], into: dict[str, Any] | None = None) -> Any:
    if node is None:
        return into
    if not (isinstance(node, tuple) and node[0] == "object"):
        raise GoError("cannot unmarshal non-object into struct")
    result = into if into is not None else {}
    for key, value in node[1]:
        name = key if key in shape else None
        if name is None:
            folded = _simple_fold(key)
            name = next((f for f in shape if _simple_fold(f) == folded), None)
        if name is None:
            continue
        kind = shape[name]
        if kind == "int":
            result[name] = _int(value)
        elif isinstance(kind, tuple) and kind[0] == "struct":
            previous = result.get(name)
            result[name] = _struct(value, kind[1], previous if isinstance(previous, dict) else None)
        elif isinstance(kind, tuple) and kind[0] == "list":
            if value is None:
                result[name] = None
            elif not isinstance(value, list):
                raise GoError("cannot unmarshal non-array into slice")
            else:
                result[name] = [_struct(item, kind[1]) for item in value]
        else:
            result[name] = _plain(value)
    return result


def read(content: bytes, shape: dict[str, Any]) -> dict[str, Any]:
    """The struct Go fills from `content` (fields it filled only)."""
    return _struct(_pairs(content), shape) or {}


def project(value: Any, shape: dict[str, Any]) -> dict[str, Any]:
    """Python's exact-key reading of a decoded document, projected onto the same fields."""
    if not isinstance(value, dict):
        return {}
    result: dict[str, Any] = {}
    for name, kind in shape.items():
        if name not in value:
            continue
        item = value[name]
        if isinstance(kind, tuple) and kind[0] == "struct":
            result[name] = project(item, kind[1]) if item is not None else None
        elif isinstance(kind, tuple) and kind[0] == "list":
            result[name] = None if item is None else [project(x, kind[1]) for x in item]
        else:
            result[name] = item
    return result
