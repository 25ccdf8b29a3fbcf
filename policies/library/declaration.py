"""The policy file's `library:` section: which base images ops curate, and where they live.

```yaml
library:
  namespace: library            # reserved: only ops identities may push here (once auth is on)
  images:
    - name: python
      tags: ["3.12-slim", "3.13-slim"]
      source: docker.io/library/python
      signed_by: [docker-official]
      supported_until: 2027-10-31
```

Library image `python` is stored in repository `library/python`; only its declared tags are
tracked (tag history) and count as bases.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from policies.signatures.trust import TrustConfig
from shared.durations import parse_duration
from storage.oci.grammar import NAME_RE, TAG_RE

DEFAULT_NAMESPACE = "library"


@dataclass(frozen=True, slots=True)
class LibraryImage:
    """One curated base image and its tags."""

    name: str
    tags: tuple[str, ...]
    source: str | None = None  # where `library sync` fetches from
    signed_by: tuple[str, ...] = ()  # signature identities required of the base itself
    supported_until: date | None = None  # after this day the image is deprecated

    def deprecated(self, today: date) -> bool:
        """Whether the image is past its `supported_until` day."""
        return self.supported_until is not None and today > self.supported_until


@dataclass(frozen=True, slots=True)
class Library:
    """The declared library: a namespace and the images in it."""

    namespace: str = DEFAULT_NAMESPACE
    images: tuple[LibraryImage, ...] = ()
    trust: TrustConfig = field(default_factory=TrustConfig)  # who `signed_by` names
    sync_interval: float | None = None  # seconds between the server's `library sync` runs

    def repository(self, name: str) -> str:
        """Where library image `name` is stored: `library/python`."""
        return f"{self.namespace}/{name}"

    def image(self, name: str) -> LibraryImage | None:
        """The declared image called `name`, or None."""
        return next((image for image in self.images if image.name == name), None)

    def image_at(self, repository: str) -> LibraryImage | None:
        """The declared image stored in `repository`, or None."""
        prefix = f"{self.namespace}/"
        if not repository.startswith(prefix):
            return None
        return self.image(repository[len(prefix) :])

    def in_namespace(self, repository: str) -> bool:
        """Whether `repository` is under the library namespace (reserved for ops)."""
        return repository.startswith(f"{self.namespace}/")

    def declares(self, name: str, tag: str) -> bool:
        """Whether `name:tag` is a declared library tag."""
        image = self.image(name)
        return image is not None and tag in image.tags

    @classmethod
    def from_section(cls, section: Mapping[str, Any], trust: TrustConfig | None = None) -> Library:
        """The library of a schema-valid `library:` section; `trust` is the policy's `trust:`
        section, which `signed_by` names signers of."""
        return cls(
            namespace=section.get("namespace", DEFAULT_NAMESPACE),
            images=tuple(
                LibraryImage(
                    name=entry["name"],
                    tags=tuple(entry["tags"]),
                    source=entry.get("source"),
                    signed_by=tuple(entry.get("signed_by", ())),
                    supported_until=(
                        date.fromisoformat(entry["supported_until"])
                        if "supported_until" in entry
                        else None
                    ),
                )
                for entry in section.get("images", ())
            ),
            trust=trust or TrustConfig(),
            sync_interval=(
                parse_duration(section["sync_interval"]) if "sync_interval" in section else None
            ),
        )


def section_problems(
    section: Mapping[str, Any], signers: frozenset[str] = frozenset()
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """What the schema cannot see in a `library:` section: (path inside it, message) pairs.
    `signers` are the names the policy's `trust:` section declares."""
    namespace = section.get("namespace", DEFAULT_NAMESPACE)
    if NAME_RE.fullmatch(namespace) is None:
        yield ("namespace",), f"not a valid repository namespace: {namespace!r}"
    seen: dict[str, int] = {}
    for index, entry in enumerate(section.get("images", ())):
        name = entry["name"]
        if NAME_RE.fullmatch(f"{namespace}/{name}") is None:
            yield ("images", index, "name"), f"not a valid repository name: {name!r}"
        if name in seen:
            yield (
                ("images", index, "name"),
                f'duplicate image "{name}" (first at images[{seen[name]}])',
            )
        seen.setdefault(name, index)
        for position, tag in enumerate(entry["tags"]):
            if TAG_RE.fullmatch(tag) is None:
                yield ("images", index, "tags", position), f"not a valid tag: {tag!r}"
        for position, signer in enumerate(entry.get("signed_by", ())):
            if signer not in signers:
                declared = ", ".join(sorted(signers)) or "none"
                yield (
                    ("images", index, "signed_by", position),
                    f"unknown signer {signer}; trust: declares {declared}",
                )
        until = entry.get("supported_until")
        if until is not None:
            try:
                date.fromisoformat(until)
            except ValueError:
                yield ("images", index, "supported_until"), f"not a date (YYYY-MM-DD): {until!r}"


def parse_reference(text: str) -> tuple[str, str]:
    """`python:3.12-slim` as (name, tag); ValueError when it is not NAME:TAG."""
    name, sep, tag = text.rpartition(":")
    if not sep or "/" in tag or NAME_RE.fullmatch(name) is None or TAG_RE.fullmatch(tag) is None:
        raise ValueError(f"expected NAME:TAG such as python:3.12-slim, got {text!r}")
    return name, tag
