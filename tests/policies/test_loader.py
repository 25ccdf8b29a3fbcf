"""The policy file: parsing, schema errors with file, line and path, building the rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policies.decisions import Action
from policies.loader import PolicyError, load_policy, parse_policy, policy_version
from policies.rules import Deny, ImmutableTags, Labels, MaxSize, MediaTypes, Platforms

EXAMPLE = """\
version: 1
mode: enforce                 # enforce | warn (record and allow) ; per rule too
rules:
  - name: release tags are immutable
    match: {repositories: ["**"], tags: ["v*"], on: [push, delete]}
    require: {immutable_tags: true}
  - name: prod images carry provenance labels
    match: {repositories: ["prod/**"], on: [push]}
    mode: warn
    require:
      labels: {org.opencontainers.image.source: "^https://git.example.com/"}
      platforms: [linux/amd64, linux/arm64]
      media_types: [oci, docker]
      max_size: 2GiB
  - name: no latest in prod
    match: {repositories: ["prod/**"], tags: ["latest"], on: [push]}
    deny: "use a version tag, not latest"
"""


def errors(text: str, source: str = "p.yaml") -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source)
    return [str(p) for p in caught.value.problems]


def test_example_builds_rules_in_order() -> None:
    policy = parse_policy(EXAMPLE, "p.yaml")
    assert [r.name for r in policy.rules] == [
        "release tags are immutable",
        "prod images carry provenance labels",
        "no latest in prod",
    ]
    immutable, labels, latest = policy.rules
    assert immutable.match.actions == {Action.PUSH, Action.DELETE}
    assert isinstance(immutable.requirements[0], ImmutableTags)
    assert immutable.mode == "enforce" and labels.mode == "warn"
    kinds = [type(r) for r in labels.requirements]
    assert kinds == [Labels, Platforms, MediaTypes, MaxSize]
    assert labels.requirements[3].limit == 2 * 1024**3
    assert isinstance(latest.requirements[0], Deny)
    assert immutable.line == 4 and latest.line == 15
    assert policy.version == policy_version(EXAMPLE.encode())
    assert policy.source == "p.yaml"


def test_json_is_accepted() -> None:
    document = {
        "version": 1,
        "rules": [{"name": "r", "match": {"repositories": ["**"], "on": ["pull"]}, "deny": "no"}],
    }
    policy = parse_policy(json.dumps(document, indent=2), "p.json")
    assert policy.rules[0].match.actions == {Action.PULL}


def test_on_and_yes_keep_their_spelling() -> None:
    # YAML 1.1 would read the key `on` as True and `yes` as a boolean.
    problems = errors(
        "version: 1\nrules:\n  - name: r\n    match: {repositories: ['**'], on: [push]}\n"
        "    require: {immutable_tags: yes}\n"
    )
    assert problems == ['p.yaml:5: rules[0].require.immutable_tags: expected boolean, got "yes"']


def test_every_error_at_once_with_line_and_path() -> None:
    text = """\
version: 2
mode: block
rules:
  - name: a
    match: {repositories: ["**"], tags: ["v*"], on: [push, pul]}
    require: {immutable_tags: "true", imutable: 1}
  - name: b
    match: {repositories: "x", on: [push]}
    require:
      labels: {a.b: 3}
      platforms: [linux]
      max_size: big
      media_types: [oci, rkt]
  - name: c
    match: {repositories: ["x"], on: [push], extra: 1}
    require: {}
  - match: {on: []}
    deny: ""
"""
    assert errors(text) == [
        "p.yaml:1: version: expected 1, got 2",
        'p.yaml:2: mode: expected one of enforce, warn, got "block"',
        'p.yaml:5: rules[0].match.on[1]: expected one of push, pull, delete, got "pul"',
        'p.yaml:6: rules[0].require.immutable_tags: expected boolean, got "true"',
        "p.yaml:6: rules[0].require.imutable: unknown key; did you mean immutable_tags?",
        'p.yaml:8: rules[1].match.repositories: expected list, got "x"',
        'p.yaml:10: rules[1].require.labels["a.b"]: expected string, got 3',
        "p.yaml:11: rules[1].require.platforms: expected a list of platforms (os/arch[/variant])"
        ' or {required: [...], allowed: [...]}, got ["linux"]',
        "p.yaml:12: rules[1].require.max_size: expected a size such as 500MiB, 2GiB or a number"
        ' of bytes, got "big"',
        "p.yaml:13: rules[1].require.media_types[1]: expected oci, docker or a manifest media"
        ' type, got "rkt"',
        "p.yaml:15: rules[2].match.extra: unknown key; expected one of: repositories, tags, on,"
        " exclude",
        "p.yaml:16: rules[2].require: must not be empty",
        "p.yaml:17: rules[3]: missing required key name",
        "p.yaml:17: rules[3].match: missing required key repositories",
        "p.yaml:17: rules[3].match.on: must not be empty",
        "p.yaml:18: rules[3].deny: must not be empty",
    ]


def test_semantic_errors_after_the_schema() -> None:
    text = """\
version: 1
rules:
  - name: c
    match: {repositories: ["x"], on: [push]}
    require: {tag_pattern: "([", labels: {"a": "(("}}
  - name: c
    match: {repositories: ["x"], on: [push]}
"""
    assert errors(text) == [
        "p.yaml:5: rules[0].require.labels.a: not a valid regular expression: missing ),"
        " unterminated subpattern at position 1",
        "p.yaml:5: rules[0].require.tag_pattern: not a valid regular expression: unterminated"
        " character set at position 1",
        "p.yaml:6: rules[1]: a rule needs require: or deny:",
        'p.yaml:6: rules[1].name: duplicate rule name "c" (first at rules[0])',
    ]


def test_top_level_unknown_and_missing_keys() -> None:
    assert errors("version: 1\nrulez: []\n") == [
        "p.yaml:1: missing required key rules",
        "p.yaml:2: rulez: unknown key; did you mean rules?",
    ]


def test_duplicate_keys_are_errors() -> None:
    text = "version: 1\nrules: []\nmode: warn\nmode: enforce\n"
    assert errors(text) == ["p.yaml:4: mode: duplicate key"]


def test_syntax_error_has_a_line() -> None:
    assert errors("version: 1\nrules: [\n  - x\n") == [
        "p.yaml:3: not valid YAML: expected the node content, but found '-'"
    ]


def test_empty_and_non_mapping_files() -> None:
    assert errors("") == ["p.yaml: the file is empty"]
    assert errors("- 1\n") == ["p.yaml:1: expected mapping, got [1]"]


def test_load_policy_from_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(EXAMPLE)
    assert load_policy(path).source == str(path)
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "missing.yaml")
    assert "cannot read: No such file or directory" in str(caught.value)


def test_platforms_object_form() -> None:
    policy = parse_policy(
        "version: 1\nrules:\n  - name: p\n    match: {repositories: ['**'], on: [push]}\n"
        "    require:\n      platforms:\n"
        "        {required: [linux/amd64], allowed: [linux/amd64, linux/arm64/v8]}\n"
    )
    platforms = policy.rules[0].requirements[0]
    assert platforms == Platforms(("linux/amd64",), ("linux/amd64", "linux/arm64/v8"))


def test_the_shipped_example_in_docs_is_valid() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
    text = docs.read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert parse_policy(block, "docs/policy.md").rules


def test_the_docs_publish_the_shipped_schema() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "policy.md"
    published = docs.read_text().split("```json\n")[-1].split("```", 1)[0]
    shipped = Path(__file__).resolve().parents[2] / "policies" / "schema.json"
    assert json.loads(published) == json.loads(shipped.read_text())
