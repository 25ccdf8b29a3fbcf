"""Which repository a signature signs for, when it signs one: the `docker_reference` check.

cosign simple signing payloads always name a reference (`critical.identity.docker-reference`).
An in-toto statement (a DSSE bundle, `cosign attest`, `sigstore attest`) names its subjects; a
subject name counts as a reference only when it reads as a fully qualified image reference, a
registry host (with a dot or a port, or `localhost`) and then a repository path, optionally with
a tag or digest, as `cosign attest` writes it (`localhost:5000/prod/app`). Other names (file
names, package URLs, bare words) sign no reference. Notation signatures and Sigstore bundles over
a digest sign none.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from policies.signatures.findings import Finding
from storage.oci.grammar import NAME_RE, TAG_RE

_HOST = re.compile(r"(?:localhost|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+|[a-zA-Z0-9.-]+:[0-9]+)")


def repository_of(reference: str) -> str:
    """The repository path of a docker reference: without registry host, tag or digest."""
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: name.rindex(":")]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return rest
    return name


@dataclass(frozen=True)
class UpstreamIdentity:
    """A proxied namespace and the upstream whose names its signatures carry (as containers
    policy.json's `remapIdentity`): `<prefix>/<path>` here is `<host>/<path>` upstream."""

    prefix: str
    hosts: frozenset[str]  # the upstream's host[:port] and its aliases (Docker Hub's)
    docker_hub: bool  # one-segment names are `library/<name>`


#: Proxied namespaces by prefix (set by `registry.proxy` from the configuration).
_UPSTREAMS: dict[str, UpstreamIdentity] = {}


def remap_identity(identity: UpstreamIdentity) -> None:
    """Let signatures naming the upstream's repository count for the proxied one."""
    _UPSTREAMS[identity.prefix] = identity


#: Repositories filled from one upstream repository (a library image's `source:`), with that
#: upstream and the path there (set by `registry.proxy.sync`).
_SOURCES: dict[str, tuple[UpstreamIdentity, str]] = {}


def remap_sources(mapping: dict[str, tuple[UpstreamIdentity, str]]) -> None:
    """Let signatures naming each repository's source (the path on its upstream's host) count
    for it; replaces the whole mapping (a source no longer declared no longer counts)."""
    _SOURCES.clear()
    _SOURCES.update(mapping)


def names_repository_for(reference: str, repository: str) -> bool:
    """Whether a signed reference names `repository`: its own name (any registry host), or,
    for a proxied repository, the upstream's name on the upstream's host only, or, for a
    repository filled from a source upstream, that source on its upstream's host only."""
    if repository_of(reference) == repository:
        return True
    source = _SOURCES.get(repository)
    if source is not None and _upstream_names(reference, *source):
        return True
    for prefix, identity in _UPSTREAMS.items():
        if repository.startswith(prefix + "/"):
            return _upstream_names(reference, identity, repository[len(prefix) + 1 :])
    return False


def _upstream_names(reference: str, identity: UpstreamIdentity, path: str) -> bool:
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: name.rindex(":")]
    first, slash, rest = name.partition("/")
    has_host = bool(slash) and ("." in first or ":" in first or first == "localhost")
    host, remote = (first, rest) if has_host else ("docker.io", name)
    if identity.docker_hub:
        if "/" not in remote:
            remote = f"library/{remote}"
        if "/" not in path:
            path = f"library/{path}"
    return host in identity.hosts and remote == path


def signs_for(finding: Finding, repository: str) -> bool:
    """Whether a finding may count for `repository` under the default `docker_reference`
    setting: it signs no reference, or one that names this repository."""
    reference = finding.docker_reference
    return reference is None or names_repository_for(reference, repository)


def names_repository(name: str) -> bool:
    """Whether an in-toto subject name is a fully qualified image reference."""
    host, slash, rest = name.partition("/")
    if not slash or not _HOST.fullmatch(host):
        return False
    path = rest.split("@", 1)[0]
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = path.rpartition(":")
        if not TAG_RE.fullmatch(tag):
            return False
    return bool(NAME_RE.fullmatch(path))


def statement_reference(payload: bytes, image_digest: str) -> str | None:
    """The reference an in-toto statement signs for the image: the name of its first subject
    with the image's digest that names a repository; None when it names none."""
    algorithm, _, hex_part = image_digest.partition(":")
    try:
        subjects = json.loads(payload)["subject"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(subjects, list):
        return None
    for subject in subjects:
        if not isinstance(subject, dict) or not isinstance(subject.get("digest"), dict):
            continue
        name = subject.get("name")
        named = subject["digest"].get(algorithm) == hex_part and isinstance(name, str)
        if named and names_repository(name):
            return name
    return None
