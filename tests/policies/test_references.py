"""Which repository a signature signs for: in-toto subject names that are image references, and
the repository path of a reference (host, tag and digest dropped)."""

from __future__ import annotations

import json

import pytest

from policies.signatures import references
from policies.signatures.findings import Finding
from policies.signatures.references import (
    UpstreamIdentity,
    names_repository,
    names_repository_for,
    remap_identity,
    remap_sources,
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


@pytest.fixture
def upstreams(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fresh remapping tables: a registry at mirror.test proxied under `mirror/`, Docker Hub
    under `hub/`, and the library repository `library/python` filled from mirror.test's
    `vendor/python`."""
    monkeypatch.setattr(references, "_UPSTREAMS", {})
    monkeypatch.setattr(references, "_SOURCES", {})
    mirror = UpstreamIdentity("mirror", frozenset({"mirror.test"}), docker_hub=False)
    hub = UpstreamIdentity("hub", frozenset({"docker.io", "index.docker.io"}), docker_hub=True)
    ported = UpstreamIdentity("ported", frozenset({"registry:5000"}), docker_hub=False)
    remap_identity(mirror)
    remap_identity(hub)
    remap_identity(ported)
    remap_sources({"library/python": (mirror, "vendor/python")})


@pytest.mark.usefixtures("upstreams")
@pytest.mark.parametrize(
    ("reference", "repository"),
    [
        ("mirror.test/team/app:v1", "mirror/team/app"),
        ("mirror.test/team/app@sha256:" + "00" * 32, "mirror/team/app"),
        ("mirror.test/app", "mirror/app"),
        ("registry.example/mirror/team/app", "mirror/team/app"),  # its own name, any host
        ("docker.io/library/busybox:1", "hub/busybox"),
        ("busybox", "hub/busybox"),  # no host: Docker Hub's, one segment: library/
        ("index.docker.io/library/busybox", "hub/library/busybox"),
        ("docker.io/acme/tool", "hub/acme/tool"),
        # A first segment without a dot, a port or `localhost` is a path, not a host, whether
        # it sorts before or after "localhost".
        ("acme/tool", "hub/acme/tool"),
        ("zeta/tool", "hub/zeta/tool"),
        ("registry:5000/team/app", "ported/team/app"),  # a port alone makes a host
        ("mirror.test/vendor/python:3.12", "library/python"),  # the library image's source
    ],
)
def test_an_upstream_name_on_the_upstream_s_host_counts(reference: str, repository: str) -> None:
    assert names_repository_for(reference, repository) is True


@pytest.mark.usefixtures("upstreams")
@pytest.mark.parametrize(
    ("reference", "repository"),
    [
        ("other.test/team/app", "mirror/team/app"),  # the upstream's path on another host
        ("mirror.test/team/other", "mirror/team/app"),  # another path on the upstream
        ("mirror.test/team/aaa", "mirror/team/app"),  # ... sorting before this one
        ("mirror.test/team/app", "mirror/team"),  # a neighbour's name
        ("team/app", "mirror/team/app"),  # no host: Docker Hub, not mirror.test
        ("mirror.test/library/app", "mirror/app"),  # library/ is Docker Hub's only
        ("mirror.test:5000/team/app", "mirror/team/app"),  # another port: another registry
        ("localhost/team/app", "mirror/team/app"),
        ("docker.io/library/busybox", "hub/acme/busybox"),
        ("docker.io/acme/busybox", "hub/busybox"),  # one segment is library/busybox
        ("mirror.test/busybox", "hub/busybox"),  # Docker Hub's name on another host
        ("localhost/acme/tool", "hub/localhost/acme/tool"),  # localhost is a host
        ("registry:5000/team/app", "hub/registry:5000/team/app"),  # so is a host with a port
        ("registry/team/app", "ported/team/app"),  # without its port: Docker Hub's
        ("mirror.test/team/app", "mirrored/team/app"),  # a prefix is a whole segment
        ("mirror.test/vendor/python", "library/ruby"),  # another library repository
        ("other.test/vendor/python", "library/python"),  # the source on another host
        ("mirror.test/vendor/python3", "library/python"),  # not the source's path
    ],
)
def test_a_name_of_anything_else_does_not_count(reference: str, repository: str) -> None:
    assert names_repository_for(reference, repository) is False


def test_sources_are_replaced_whole(upstreams: None) -> None:
    """A source no longer declared no longer counts."""
    mirror = UpstreamIdentity("mirror", frozenset({"mirror.test"}), docker_hub=False)
    remap_sources({"library/ruby": (mirror, "vendor/ruby")})
    assert names_repository_for("mirror.test/vendor/ruby", "library/ruby")
    assert not names_repository_for("mirror.test/vendor/python", "library/python")


def test_subjects_of_another_shape_or_digest_are_passed_over() -> None:
    """Subjects that are not objects or carry no digest object are skipped, not a crash; a
    subject whose digest sorts before the image's is another image's."""
    lower = "00" * 32
    payload = json.dumps(
        {
            "subject": [
                "registry.example/a/string",
                {"name": "registry.example/no/digest"},
                {"name": "registry.example/text/digest", "digest": "sha256:" + IMAGE[7:]},
                {"name": "registry.example/lower/digest", "digest": {"sha256": lower}},
                {"name": "registry.example/prod/app", "digest": {"sha256": IMAGE[7:]}},
            ]
        }
    ).encode()
    assert statement_reference(payload, IMAGE) == "registry.example/prod/app"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",  # ValueError
        b'{"predicateType": "x"}',  # KeyError: no subject
        b'["subject"]',  # TypeError: a list indexed by a key
        b'"subject"',  # TypeError: a string indexed by a key
    ],
)
def test_a_payload_that_is_not_a_statement_names_no_reference(payload: bytes) -> None:
    assert statement_reference(payload, IMAGE) is None
