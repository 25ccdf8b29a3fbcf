"""Decode JSON that every client reads the same way, or refuse it with the reason.

The policy judges the bytes Python's `json` reads; docker, containerd, skopeo and cosign read the
same bytes with Go's `encoding/json`, which matches object keys to struct fields
case-insensitively (`Config` fills `config`, the Kelvin sign `K` matches `k`), keeps the last of
duplicate keys, decodes a lone UTF-16 surrogate escape as U+FFFD, and refuses a byte-order mark,
NaN, and integers that do not fit the field. A document on which two such decoders could
disagree is refused here, so the policy never judges one reading while a client runs another:

* not UTF-8, or a byte-order mark;
* a duplicate key in any object (Python keeps the last, other decoders the first or refuse);
* a key that differs from a spec field only in case, anywhere a `Struct` describes the document
  (Go reads it as that field; Python does not);
* NaN, Infinity, a float that overflows, an integer outside int64;
* a string holding a lone surrogate (Python keeps it, Go turns it into U+FFFD);
* nesting deeper than `MAX_DEPTH` (a recursion bomb answered 500 before).

Python's own decoder does the parsing (through its hooks); nothing here tokenises JSON. This
module has no dependency on the HTTP layer, so the registry and the policy engine share it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Deepest nesting of objects and arrays accepted. Manifests nest five deep (index, descriptor,
#: platform, features), image configs six (config, Healthcheck, Test); nothing legitimate nears it.
MAX_DEPTH = 32

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BOM = b"\xef\xbb\xbf"


class AmbiguousJSON(ValueError):
    """The bytes are not JSON that every client decodes the same way; the message says why."""


@dataclass(frozen=True)
class ListOf:
    """An array whose items are `item` structs."""

    item: Struct


@dataclass(frozen=True)
class Struct:
    """The fields a Go client decodes into a struct: `fields` maps each field's JSON name to the
    shape of its value (a nested `Struct`, a `ListOf` structs, or None for a scalar or a map,
    whose keys Go matches exactly)."""

    name: str
    fields: Mapping[str, Struct | ListOf | None]
    _folded: dict[str, str] = field(init=False, repr=False, compare=False)
    _nested: tuple[tuple[str, Struct | ListOf], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_folded", {_fold(k): k for k in self.fields})
        nested = tuple((k, v) for k, v in self.fields.items() if v is not None)
        object.__setattr__(self, "_nested", nested)

    def spec_field_like(self, key: str) -> str | None:
        """The spec field that `key` would fill in Go though it is spelled differently."""
        found = self._folded.get(_fold(key))
        return found if found is not None and found != key else None


def _fold(key: str) -> str:
    # Full case folding covers Go's simple folding for every field name here (ASCII names, and
    # the two non-ASCII letters that fold onto ASCII: U+212A KELVIN SIGN and U+017F LONG S).
    return key.casefold()


def loads(content: bytes, shape: Struct | None = None, *, what: str = "document") -> Any:
    """Decode `content`; raise `AmbiguousJSON` when two reasonable decoders could read it
    differently (see the module docstring). `shape` names the struct fields to check keys
    against; `what` names the document in messages."""
    if content.startswith(_BOM):
        raise AmbiguousJSON(f"{what} starts with a byte-order mark")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AmbiguousJSON(f"{what} is not UTF-8 (byte {exc.start})") from None
    try:
        document = json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_constant,
            parse_int=_integer,
            parse_float=_float,
        )
    except RecursionError:
        raise AmbiguousJSON(f"{what} nests deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise AmbiguousJSON(f"{what} is not valid JSON: {exc}") from None
    except AmbiguousJSON as exc:
        raise AmbiguousJSON(f"{what} {exc}") from None
    if isinstance(document, dict | list):
        _check_tree(document, text, what)
    if shape is not None:
        check_fields(document, shape, what)
    return document


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise AmbiguousJSON(f"has the key {_shown(key)} twice in one object")
            seen.add(key)
    return document


def _constant(name: str) -> Any:
    raise AmbiguousJSON(f"holds {name}, which is not JSON")


def _integer(text: str) -> int:
    if len(text) < 19:  # at most 18 digits: always inside int64
        return int(text)
    # Checked on the text first: int() of 5,000 digits raises before any range check could run.
    if len(text.lstrip("-")) > 19:
        raise AmbiguousJSON(f"holds the integer {text[:24]}…, outside int64")
    value = int(text)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise AmbiguousJSON(f"holds the integer {text}, outside int64")
    return value


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise AmbiguousJSON(f"holds the number {text[:24]}, out of a float's range")
    return value


#: A `\\u` escape of a UTF-16 surrogate (D800-DFFF), the only way JSON text spells one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_tree(document: Any, text: str, what: str) -> None:
    """Depth and lone surrogates, walked without recursion over containers only."""
    containers: list[tuple[Any, int]] = [(document, 1)]
    while containers:
        value, depth = containers.pop()
        if depth > MAX_DEPTH:
            raise AmbiguousJSON(f"{what} nests deeper than {MAX_DEPTH} levels")
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            if isinstance(item, dict | list):
                containers.append((item, depth + 1))
    # Surrogate pairs are fine, lone ones are not; only escapes can spell either, so the
    # encoder (in C) is asked only when the text holds such an escape.
    if _SURROGATE_ESCAPE.search(text) is not None:
        try:
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise AmbiguousJSON(f"{what} holds a lone UTF-16 surrogate escape") from None


def check_fields(value: Any, shape: Struct, where: str) -> None:
    """Refuse a key that fills a field of `shape` in Go but is spelled differently, at every
    depth `shape` describes. Values of the wrong type are left to the caller's checks."""
    if not isinstance(value, dict):
        return
    for key in value:
        if key in shape.fields:
            continue
        spec = shape.spec_field_like(key)
        if spec is not None:
            raise AmbiguousJSON(
                f"{where} has the key {_shown(key)}, which Go clients read as the field "
                f"{_shown(spec)}: spell it exactly {_shown(spec)}"
            )
    for name, inner in shape._nested:
        if name not in value:
            continue
        if isinstance(inner, ListOf):
            items = value[name]
            if isinstance(items, list):
                for position, item in enumerate(items):
                    check_fields(item, inner.item, f"{where}.{name}[{position}]")
        else:
            check_fields(value[name], inner, f"{where}.{name}")


def _shown(text: str) -> str:
    shown = json.dumps(text[:60])
    return shown if len(text) <= 60 else shown[:-1] + '…"'


# -- the shapes Go clients decode ------------------------------------------------------------

#: A platform (OCI image index `platform`, Docker manifest list `platform`).
PLATFORM = Struct(
    "platform",
    {
        "architecture": None,
        "os": None,
        "os.version": None,
        "os.features": None,
        "variant": None,
        "features": None,
    },
)

#: A content descriptor (OCI descriptor, Docker schema 2 descriptor).
DESCRIPTOR = Struct(
    "descriptor",
    {
        "mediaType": None,
        "digest": None,
        "size": None,
        "urls": None,
        "annotations": None,
        "data": None,
        "artifactType": None,
        "platform": PLATFORM,
    },
)

#: Image manifests and indexes, OCI and Docker, in one shape: a document with fields of both is
#: refused elsewhere as ambiguous, so one shape checks every key either kind may hold.
MANIFEST = Struct(
    "manifest",
    {
        "schemaVersion": None,
        "mediaType": None,
        "artifactType": None,
        "config": DESCRIPTOR,
        "layers": ListOf(DESCRIPTOR),
        "manifests": ListOf(DESCRIPTOR),
        "subject": DESCRIPTOR,
        "annotations": None,
    },
)

#: The run configuration inside an image config (OCI `ImageConfig`, Docker `container.Config`):
#: Go spells these fields with capitals, and reads `labels` as `Labels`.
CONTAINER_CONFIG = Struct(
    "config",
    {
        name: None
        for name in (
            "Hostname",
            "Domainname",
            "User",
            "AttachStdin",
            "AttachStdout",
            "AttachStderr",
            "ExposedPorts",
            "Tty",
            "OpenStdin",
            "StdinOnce",
            "Env",
            "Cmd",
            "Healthcheck",
            "ArgsEscaped",
            "Image",
            "Volumes",
            "WorkingDir",
            "Entrypoint",
            "NetworkDisabled",
            "MacAddress",
            "OnBuild",
            "Labels",
            "StopSignal",
            "StopTimeout",
            "Shell",
        )
    },
)

#: An image config (OCI image config, Docker image config v1).
IMAGE_CONFIG = Struct(
    "image config",
    {
        "created": None,
        "author": None,
        "architecture": None,
        "os": None,
        "os.version": None,
        "os.features": None,
        "variant": None,
        "config": CONTAINER_CONFIG,
        "container_config": CONTAINER_CONFIG,
        "rootfs": Struct("rootfs", {"type": None, "diff_ids": None}),
        "history": ListOf(
            Struct(
                "history",
                {
                    "created": None,
                    "created_by": None,
                    "author": None,
                    "comment": None,
                    "empty_layer": None,
                },
            )
        ),
        "container": None,
        "docker_version": None,
        "id": None,
        "parent": None,
        "comment": None,
    },
)
