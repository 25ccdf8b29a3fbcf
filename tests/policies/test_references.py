"""Which repository a signature signs for: in-toto subject names that are image references, and
the repository path of a reference (host, tag and digest dropped)."""

from __future__ import annotations

import json

import pytest

from policies.signatures.findings import Finding
from policies.signatures.references import (
    names_repository,
    repository_of,
    signs_for,
    statement_reference,
)

IMAGE = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("localhost:5000/prod/app", True),
        ("localhost/prod/app", True),
        ("registry.example/prod/app:v1", True),
        ("registry.example:443/a/b/c@sha256:" + "00" * 32, True),
        ("ghcr.io/acme/app", True),
        ("prod/app", False),  # no registry host: could be anything
        ("app.tar", False),
        ("pkg:docker/acme/app@1.0", False),
        ("registry.example/Prod/App", False),  # not a repository name (upper case)
        ("registry.example/prod/app:bad tag", False),
        ("registry.example/", False),
        ("", False),
    ],
)
def test_names_repository(name: str, expected: bool) -> None:
    assert names_repository(name) is expected


def statement(*subjects: tuple[str, str]) -> bytes:
    return json.dumps(
        {"subject": [{"name": n, "digest": {"sha256": d[7:]}} for n, d in subjects]}
    ).encode()


def test_the_subject_with_the_image_digest_names_the_reference() -> None:
    other = "sha256:" + "cd" * 32
    payload = statement(
        ("registry.example/other/repo", other),
        ("app.tar", IMAGE),
        ("registry.example/prod/app", IMAGE),
    )
    assert statement_reference(payload, IMAGE) == "registry.example/prod/app"
    assert statement_reference(payload, other) == "registry.example/other/repo"
    assert statement_reference(statement(("app.tar", IMAGE)), IMAGE) is None
    assert statement_reference(b"not json", IMAGE) is None
    assert statement_reference(b'{"subject": {"name": "x"}}', IMAGE) is None


@pytest.mark.parametrize(
    ("reference", "repository"),
    [
        ("localhost:5000/prod/web:v1", "prod/web"),
        ("registry.example.com/a/b@sha256:00", "a/b"),
        ("library/busybox:latest", "library/busybox"),
        ("localhost/prod/web", "prod/web"),
        ("prod/web", "prod/web"),
    ],
)
def test_repository_of(reference: str, repository: str) -> None:
    assert repository_of(reference) == repository


def test_signs_for() -> None:
    def finding(reference: str | None) -> Finding:
        return Finding("sha256:" + "0" * 64, "cosign", True, "release", "", reference)

    assert signs_for(finding(None), "prod/app")
    assert signs_for(finding("registry.example/prod/app:v1"), "prod/app")
    assert not signs_for(finding("registry.example/other/app"), "prod/app")
