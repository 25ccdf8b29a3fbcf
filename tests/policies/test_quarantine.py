"""`quarantine.readable_by`: read from the policy file, refused when misspelt, and who it names."""

from __future__ import annotations

import pytest

from policies.loader import PolicyError, parse_policy
from policies.quarantine import PRODUCERS_READ, QuarantineReaders

HEAD = "version: 1\nrules: []\n"


def test_without_a_section_the_producers_read() -> None:
    assert parse_policy(HEAD).quarantine == PRODUCERS_READ
    assert PRODUCERS_READ.reader("prod/app", "ci", (), may_push=True) == (
        "quarantined; read by a producer of prod/app"
    )
    assert PRODUCERS_READ.reader("prod/app", "deploy", ("deployers",), may_push=False) is None


def test_readable_by_lists_exactly_who_reads() -> None:
    policy = parse_policy(HEAD + "quarantine: {readable_by: {groups: [ci], users: [scanner]}}\n")
    readers = policy.quarantine
    assert readers == QuarantineReaders(False, frozenset({"scanner"}), frozenset({"ci"}))
    # A producer outside the list does not read; the listed ones do, push or not.
    assert readers.reader("prod/app", "alice", ("dev",), may_push=True) is None
    assert readers.reader("prod/app", "robot", ("builders", "ci"), may_push=False) == (
        "quarantined; read by robot of group ci (quarantine.readable_by.groups)"
    )
    assert readers.reader("prod/app", "scanner", (), may_push=False) == (
        "quarantined; read by scanner (quarantine.readable_by.users)"
    )


def test_an_empty_readable_by_lets_nobody_read() -> None:
    readers = parse_policy(HEAD + "quarantine: {readable_by: {}}\n").quarantine
    assert readers.reader("prod/app", "ci", ("ci",), may_push=True) is None


@pytest.mark.parametrize(
    "section",
    [
        "quarantine: {readable_by: {group: [ci]}}",  # misspelt: would silently widen nothing
        "quarantine: {readers: {groups: [ci]}}",
        "quarantine: {readable_by: {groups: ci}}",
        "quarantine: {readable_by: {producers: yes-please}}",
        "quarantine: {readable_by: {users: ['']}}",
    ],
)
def test_a_malformed_section_is_refused_with_its_line(section: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(HEAD + section + "\n")
    assert any(problem.line == 3 for problem in raised.value.problems), str(raised.value)
    assert "quarantine" in str(raised.value)
