"""The events Trustyard sends, as CloudEvents 1.0 in structured JSON form.

Every body looks like this (`Content-Type: application/cloudevents+json`)::

    {
      "specversion": "1.0",
      "id": "5f0c...",                          unique per event; the same for every endpoint
      "source": "/trustyard/registry.example.com:5000",
      "type": "dev.trustyard.image.pushed",
      "subject": "prod/app:v1",
      "time": "2026-11-20T10:00:00.123456Z",
      "datacontenttype": "application/json",
      "data": {"repository": "prod/app", "tag": "v1", "digest": "sha256:...",
               "mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1234,
               "actor": "alice"}
    }

Kinds (the `type` without `dev.trustyard.`, as endpoints' `events:` name them): image.pushed,
image.pulled, tag.deleted, manifest.deleted, policy.denied, library.tag.updated.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

TYPE_PREFIX = "dev.trustyard."
KINDS = (
    "image.pushed",
    "image.pulled",
    "tag.deleted",
    "manifest.deleted",
    "policy.denied",
    "library.tag.updated",
)


@dataclass(frozen=True)
class Event:
    """Something that happened to a repository, before it is written to the outbox."""

    kind: str  # one of KINDS
    repository: str
    data: dict[str, Any]
    subject: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: float = field(default_factory=time.time)

    @property
    def type(self) -> str:
        """The CloudEvents `type`: `dev.trustyard.<kind>`."""
        return TYPE_PREFIX + self.kind

    def body(self, source: str) -> bytes:
        """The structured-mode CloudEvents JSON body: the exact bytes sent and signed."""
        moment = datetime.fromtimestamp(self.time, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        document = {
            "specversion": "1.0",
            "id": self.id,
            "source": source,
            "type": self.type,
            "subject": self.subject or self.repository,
            "time": moment,
            "datacontenttype": "application/json",
            "data": {"repository": self.repository, **self.data},
        }
        return json.dumps(document, separators=(",", ":")).encode()


def manifest_data(
    *,
    tag: str | None,
    digest: str,
    media_type: str,
    size: int,
    actor: str,
    **extra: Any,
) -> dict[str, Any]:
    """The `data` of an event about a manifest."""
    return {
        "tag": tag,
        "digest": digest,
        "mediaType": media_type,
        "size": size,
        "actor": actor,
        **extra,
    }


def subject(repository: str, tag: str | None, digest: str) -> str:
    """`repo:tag`, or `repo@digest` without a tag."""
    return f"{repository}:{tag}" if tag else f"{repository}@{digest}"
