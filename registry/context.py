"""What every handler reaches through the application: the open stores and the configuration."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from policies.gateway import PolicyGate
from registry.config import Config
from registry.pipeline import ManifestPipeline
from registry.upload_sessions import UploadSessions
from storage.blobstore import BlobStore
from storage.metadata import MetadataDB


@dataclass
class RegistryContext:
    """The registry's open resources, created at start-up and closed at shutdown."""

    config: Config
    db: MetadataDB
    store: BlobStore
    uploads: UploadSessions
    policy: PolicyGate


CONTEXT = web.AppKey("context", RegistryContext)


def context(request: web.Request) -> RegistryContext:
    """The registry context of the application serving `request`."""
    return request.app[CONTEXT]


PIPELINE = web.AppKey("pipeline", ManifestPipeline)
"""The manifest pipeline every push and delete goes through (`registry.pipeline`)."""


def pipeline(request: web.Request) -> ManifestPipeline:
    """The manifest pipeline of the application serving `request`."""
    return request.app[PIPELINE]
