"""Read a policy file: parse it (YAML or JSON), check it against `schema.json`, build the rules.

Every problem is reported at once, each with the file, the line and the path inside the document
(`policy.yaml:12: rules[2].require.immutable_tags: expected boolean, got "yes"`). Unknown keys are
errors. The YAML is read with YAML 1.2 booleans (only `true`/`false`), so the `on:` key and a
value such as `yes` keep their spelling instead of turning into booleans.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from policies import vulnerabilities
from policies.base_image_rule import BaseImage
from policies.decisions import Action
from policies.engine import Policy
from policies.library.declaration import Library, section_problems
from policies.quarantine import QuarantineReaders
from policies.rules import (
    Annotations,
    Deny,
    ImmutableTags,
    Labels,
    Match,
    MaxSize,
    MediaTypes,
    Platforms,
    Requirement,
    Rule,
    TagPattern,
    parse_size,
)
from policies.signature_rule import SignatureRequirement
from policies.signatures.trust import TrustConfig, parse_trust
from shared.durations import parse_duration
from shared.globs import GlobSet
from storage.oci.media_types import RUNTIME_CONFIG_TYPES, SIGNATURE_PAYLOAD_TYPES

PathTuple = tuple[str | int, ...]


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a policy file."""

    line: int
    path: str
    message: str
    source: str = ""

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PolicyError(ValueError):
    """The policy file is invalid; `problems` lists everything wrong with it."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class _PolicyYAMLLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: `on`, `yes`, `off` stay strings."""


# Timestamps stay strings too: `supported_until: 2027-10-31` is checked as text, like every date.
_PolicyYAMLLoader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PolicyYAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@cache
def schema() -> dict[str, Any]:
    """The policy file's JSON Schema (shipped as `policies/schema.json`)."""
    return json.loads(resources.files("policies").joinpath("schema.json").read_text())


def format_path(path: PathTuple) -> str:
    """`rules[2].require.labels["org.opencontainers.image.source"]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


class _Lines:
    """Line numbers (1-based) of every value and key in a composed YAML document."""

    def __init__(self, root: yaml.Node) -> None:
        self.values: dict[PathTuple, int] = {}
        self.keys: dict[PathTuple, int] = {}
        self.duplicates: list[tuple[PathTuple, int]] = []
        self._walk(root, ())

    def _walk(self, node: yaml.Node, path: PathTuple) -> None:
        self.values[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    self.duplicates.append(((*path, key), key_node.start_mark.line + 1))
                seen.add(key)
                self.keys[(*path, key)] = key_node.start_mark.line + 1
                self._walk(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, (*path, index))

    def of(self, path: PathTuple, *, key: bool = False) -> int:
        """The line of the value (or key) at `path`, or of its nearest ancestor."""
        if key and path in self.keys:
            return self.keys[path]
        while path not in self.values and path:
            path = path[:-1]
        return self.values.get(path, 0)


_JSON_TYPES = {
    "boolean": "boolean",
    "string": "string",
    "integer": "integer",
    "number": "number",
    "object": "mapping",
    "array": "list",
    "null": "null",
}


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _schema_problems(document: Any, lines: _Lines, source: str) -> Iterator[Problem]:
    validator = jsonschema.Draft202012Validator(schema())
    for error in validator.iter_errors(document):
        path: PathTuple = tuple(error.absolute_path)
        line = lines.of(path)
        custom = error.schema.get("x-error") if isinstance(error.schema, dict) else None
        if error.validator == "additionalProperties":
            allowed = list(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(allowed)):
                hint = difflib.get_close_matches(key, allowed, n=1)
                expected = (
                    f"did you mean {hint[0]}?" if hint else f"expected one of: {', '.join(allowed)}"
                )
                yield Problem(
                    lines.of((*path, key), key=True),
                    format_path((*path, key)),
                    f"unknown key; {expected}",
                    source,
                )
            continue
        if error.validator == "required":
            missing = re.match(r"'([^']+)'", error.message)
            name = missing.group(1) if missing else error.message
            message = f"missing required key {name}"
        elif custom:
            message = f"{custom}, got {_shown(error.instance)}"
        elif error.validator == "type":
            wanted = error.validator_value
            names = [wanted] if isinstance(wanted, str) else list(wanted)
            message = (
                f"expected {' or '.join(_JSON_TYPES.get(n, n) for n in names)}, "
                f"got {_shown(error.instance)}"
            )
        elif error.validator == "enum":
            message = (
                f"expected one of {', '.join(map(str, error.validator_value))}, "
                f"got {_shown(error.instance)}"
            )
        elif error.validator == "const":
            message = f"expected {_shown(error.validator_value)}, got {_shown(error.instance)}"
        elif error.validator in ("minItems", "minLength", "minProperties"):
            message = "must not be empty"
        elif error.validator == "uniqueItems":
            message = "has duplicate entries"
        else:
            message = error.message
        yield Problem(line, format_path(path), message, source)


def policy_version(content: bytes, trust_version: str | None = None) -> str:
    """The policy's version: the sha256 of the file's bytes and, when it trusts any signer, of
    the trust config's version (which covers every key, certificate and trusted root file it
    references), so that replacing a referenced file makes a new version."""
    digest = hashlib.sha256(content)
    if trust_version is not None:
        digest.update(b"\ntrust:" + trust_version.encode())
    return "sha256:" + digest.hexdigest()


def parse_policy(content: bytes | str, source: str = "<policy>") -> Policy:
    """Build a `Policy` from the text of a policy file, or raise `PolicyError` listing all
    problems."""
    raw = content.encode() if isinstance(content, str) else content
    try:
        loader = _PolicyYAMLLoader(raw.decode("utf-8"))
        try:
            node = loader.get_single_node()
            document = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except UnicodeDecodeError:
        raise PolicyError(source, [Problem(0, "", "not UTF-8 text", source)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        detail = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(
            source, [Problem(line, "", f"not valid YAML: {detail}", source)]
        ) from None
    if node is None:
        raise PolicyError(source, [Problem(0, "", "the file is empty", source)])
    lines = _Lines(node)
    problems = [
        Problem(line, format_path(path), "duplicate key", source) for path, line in lines.duplicates
    ]
    problems += _schema_problems(document, lines, source)
    if problems:
        # Report what the rules' and the trust section's own checks find too, so that one
        # run shows every problem (the trust section only when the schema found it well formed).
        problems += _rule_problems(document, lines, source)
        if isinstance(document, dict) and not any(p.path.startswith("trust") for p in problems):
            problems += _trust_problems(document, lines, source)[1]
        raise PolicyError(source, sorted(set(problems)))
    section = document.get("library")
    trust, trust_problems = _trust_problems(document, lines, source)
    library_problems = [
        Problem(lines.of(("library", *path)), format_path(("library", *path)), message, source)
        for path, message in section_problems(section or {}, trust.names)
    ]
    problems += library_problems + trust_problems
    if library_problems:
        raise PolicyError(source, problems)
    library = Library.from_section(section, trust) if section is not None else None
    rules, rule_problems = _build_rules(document, lines, source, library, trust)
    exempt_types, exempt_problems = _exempt_types(document.get("artifacts"), lines, source)
    problems += rule_problems + exempt_problems
    if problems:
        raise PolicyError(source, problems)
    return Policy(
        rules=tuple(rules),
        mode=document.get("mode", "enforce"),
        version=policy_version(raw, trust.version if trust.names else None),
        source=source,
        library=library,
        files=trust.files,
        quarantine=QuarantineReaders.from_section(document.get("quarantine")),
        default=document.get("default", "allow"),
        exempt_types=exempt_types,
    )


def _exempt_types(
    section: Mapping[str, Any] | None, lines: _Lines, source: str
) -> tuple[frozenset[str], list[Problem]]:
    """`artifacts.exempt_types`; an image config type there is a mistake: images are never
    exempt (`storage.oci.image_kind`), so naming one would exempt nothing while seeming to."""
    if section is None:
        return frozenset(), []
    problems = []
    for position, name in enumerate(section["exempt_types"]):
        essence = name.split(";")[0].strip().lower()
        if essence in RUNTIME_CONFIG_TYPES or essence in SIGNATURE_PAYLOAD_TYPES:
            path: PathTuple = ("artifacts", "exempt_types", position)
            problems.append(
                Problem(
                    lines.of(path),
                    format_path(path),
                    f"{name} is an image config type: container runtimes run such manifests, "
                    "so they are never exempt"
                    if essence in RUNTIME_CONFIG_TYPES
                    else f"{name} is a signature payload type: signatures are exempt already",
                    source,
                )
            )
    return frozenset(section["exempt_types"]), problems


def _policy_folder(source: str) -> Path:
    """Where relative `pem_file` and `trusted_root` paths of a policy are read from."""
    return Path(".") if source.startswith("<") else Path(source).parent


def load_policy(path: Path) -> Policy:
    """Read and build the policy file at `path` (`PolicyError` when it is unreadable or invalid)."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise PolicyError(
            str(path), [Problem(0, "", f"cannot read: {exc.strerror}", str(path))]
        ) from None
    return parse_policy(content, str(path))


def _trust_problems(
    document: Mapping[str, Any], lines: _Lines, source: str
) -> tuple[TrustConfig, list[Problem]]:
    """The `trust:` section as loaded, and its problems (a key file that cannot be read...)."""
    trust, found = parse_trust(document.get("trust"), _policy_folder(source))
    return trust, [
        Problem(lines.of(("trust", *path)), format_path(("trust", *path)), message, source)
        for path, message in found
    ]


def _declared_signers(document: Mapping[str, Any]) -> set[str]:
    """Every signer name the `trust:` section declares, loaded or not."""
    trust = document.get("trust")
    if not isinstance(trust, dict):
        return set()
    return {
        str(name) for section in trust.values() if isinstance(section, dict) for name in section
    }


def _rule_problems(document: Any, lines: _Lines, source: str) -> list[Problem]:
    """The rules' own checks (duplicate names, regular expressions, a rule that requires
    nothing) on a document the schema refused, read defensively: whatever has the wrong shape
    is the schema's problem, already reported."""
    problems: list[Problem] = []
    rules = document.get("rules") if isinstance(document, dict) else None
    if not isinstance(rules, list):
        return problems
    names: dict[str, int] = {}

    def problem(path: PathTuple, message: str) -> None:
        problems.append(Problem(lines.of(path), format_path(path), message, source))

    def regex(path: PathTuple, text: Any) -> None:
        if isinstance(text, str):
            try:
                re.compile(text)
            except re.error as exc:
                problem(path, f"not a valid regular expression: {exc}")

    for index, entry in enumerate(rules):
        at: PathTuple = ("rules", index)
        if not isinstance(entry, dict):
            continue
        name = entry.get("name")
        if isinstance(name, str):
            if name in names:
                problem(
                    (*at, "name"), f'duplicate rule name "{name}" (first at rules[{names[name]}])'
                )
            names.setdefault(name, index)
        require = entry.get("require")
        if require is None and "deny" not in entry:
            problem(at, "a rule needs require: or deny:")
        if not isinstance(require, dict):
            continue
        regex((*at, "require", "tag_pattern"), require.get("tag_pattern"))
        for key in ("labels", "annotations"):
            patterns = require.get(key)
            if isinstance(patterns, dict):
                for label, pattern in patterns.items():
                    regex((*at, "require", key, label), pattern)
    return problems


def _build_rules(
    document: Mapping[str, Any],
    lines: _Lines,
    source: str,
    library: Library | None = None,
    trust: TrustConfig | None = None,
) -> tuple[list[Rule], list[Problem]]:
    """Rules from a schema-valid document; problems the schema cannot see (regexes, names)."""
    rules: list[Rule] = []
    problems: list[Problem] = []
    default_mode = document.get("mode", "enforce")
    names: dict[str, int] = {}

    def problem(path: PathTuple, message: str) -> None:
        problems.append(Problem(lines.of(path), format_path(path), message, source))

    def regex(path: PathTuple, text: str) -> re.Pattern[str]:
        try:
            return re.compile(text)
        except re.error as exc:
            problem(path, f"not a valid regular expression: {exc}")
            return re.compile(re.escape(text))

    for index, entry in enumerate(document["rules"]):
        at: PathTuple = ("rules", index)
        name = entry["name"]
        if name in names:
            problem((*at, "name"), f'duplicate rule name "{name}" (first at rules[{names[name]}])')
        names.setdefault(name, index)
        require = entry.get("require")
        if require is None and "deny" not in entry:
            problem(at, "a rule needs require: or deny:")
        requirements: list[Requirement] = []
        if "deny" in entry:
            requirements.append(Deny(entry["deny"]))
        for key, value in (require or {}).items():
            where = (*at, "require", key)
            if key == "immutable_tags":
                if value:
                    requirements.append(ImmutableTags())
                else:
                    problem(where, "false requires nothing; leave immutable_tags out")
            elif key == "tag_pattern":
                requirements.append(TagPattern(regex(where, value)))
            elif key == "labels":
                if not value:
                    problem(where, "an empty labels: requires nothing")
                requirements.append(Labels({k: regex((*where, k), v) for k, v in value.items()}))
            elif key == "annotations":
                if not value:
                    problem(where, "an empty annotations: requires nothing")
                requirements.append(
                    Annotations({k: regex((*where, k), v) for k, v in value.items()})
                )
            elif key == "platforms":
                spec = {"required": value} if isinstance(value, list) else value
                allowed = spec.get("allowed")
                requirements.append(
                    Platforms(
                        tuple(spec.get("required", ())), None if allowed is None else tuple(allowed)
                    )
                )
            elif key == "media_types":
                requirements.append(MediaTypes(tuple(value)))
            elif key == "max_size":
                requirements.append(MaxSize(parse_size(value)))
            elif key == "vulnerabilities":
                requirements.append(
                    vulnerabilities.build(value, lambda path, m, w=where: problem((*w, *path), m))
                )
            elif key == "signature":
                trust = trust or TrustConfig()
                signer_list = value.get("any_of") or value.get("all_of") or value.get("of") or []
                for signer in signer_list:
                    # A signer whose key file failed to load is declared: its problem is the
                    # file, reported by the trust section, not a second "unknown signer".
                    if signer not in trust.names and signer not in _declared_signers(document):
                        declared = ", ".join(sorted(trust.names)) or "none"
                        problem(
                            where,
                            f"unknown signer {signer}; trust: declares {declared}",
                        )
                if "at_least" in value and value["at_least"] > len(signer_list):
                    problem(where, f"at_least {value['at_least']} of {len(signer_list)} signers")
                requirements.append(SignatureRequirement.build(value, trust))
            elif key == "base_image":
                if library is None:
                    problem(where, "base_image needs a library: section declaring the base images")
                behind = value.get("max_behind")
                if (
                    not value.get("from_library", True)
                    and value.get("allow_deprecated", True)
                    and behind is None
                ):
                    problem(
                        where,
                        "requires nothing (from_library: false, deprecated bases allowed, no "
                        "max_behind); leave base_image out",
                    )
                requirements.append(
                    BaseImage(
                        library=library or Library(),
                        from_library=value.get("from_library", True),
                        allow_deprecated=value.get("allow_deprecated", True),
                        max_behind=None if behind is None else parse_duration(behind),
                        max_behind_text="" if behind is None else behind.strip(),
                    )
                )
        if not requirements and ("deny" in entry or require is not None):
            problem(at, f'rule "{name}" requires nothing: a rule that checks nothing would hold')
        match = entry["match"]
        exclude = match.get("exclude", {})
        rules.append(
            Rule(
                name=name,
                match=Match(
                    repositories=GlobSet.of(match["repositories"]),
                    actions=frozenset(Action(a) for a in match["on"]),
                    tags=GlobSet.of(match["tags"]) if "tags" in match else None,
                    exclude_repositories=(
                        GlobSet.of(exclude["repositories"]) if "repositories" in exclude else None
                    ),
                    exclude_tags=GlobSet.of(exclude["tags"]) if "tags" in exclude else None,
                ),
                requirements=tuple(requirements),
                mode=entry.get("mode", default_mode),
                line=lines.of(at),
            )
        )
    return rules, problems
