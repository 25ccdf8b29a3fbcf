"""The manifest pipeline: every push and delete of a manifest, whoever asks for it.

```
ManifestPush ──> read: reference, size, verification limits, parse          (push.prepare)
                  │ observers before: the image's lineage traced (outside the tag guard)
        ┌─ tag guard (per repository:tag) ──────────────────────────────────────────────┐
        │ policy check ── denied: logged + `policy.denied`, nothing stored ──> DENIED   │
        │ observers stage ─> one transaction: the tag still where the check read it,    │
        │                    manifest, references, tag, evidence bump, outbox rows,     │
        │                    library tag history, lineage                               │
        └───────────────────────────────────────────────────────────────────────────────┘
                  │ committed
        observers, each guarded (a failure is logged and counted, never an error):
        evidence cache ─> event sender ─> decision log ─> library (signed_by, lineage,
        re-tracing) ─> signature proofs (verified on the verification threads)
                  │
                Stored ──> the handler answers 201
```

Handlers speak HTTP and call `ManifestPipeline.push` / `.delete`; failures are the floors' own
exceptions (`OciError` with the spec's code, `PolicyDenied`, storage errors), which the error
middleware turns into the spec's error body and status (`registry.errors`). A manifest that
arrives by other means (a pull-through cache) is pushed the same way, with the same checks and
observers.
"""

from __future__ import annotations

from policies.gateway import PolicyGate
from registry.events.hub import EventHub
from registry.pipeline.delete import Deleted, ManifestDelete, delete_manifest
from registry.pipeline.observers import Observers, default_observers
from registry.pipeline.push import ManifestPush, Stored, push_manifest
from storage.blobstore import BlobStore
from storage.metadata import MetadataDB


class ManifestPipeline:
    """The one way manifests are stored and deleted in a running registry."""

    def __init__(
        self,
        db: MetadataDB,
        store: BlobStore,
        gate: PolicyGate,
        events: EventHub,
        observers: Observers | None = None,
    ) -> None:
        self.db = db
        self.gate = gate
        self.events = events
        self.observers = observers or default_observers(db, store, gate, events)

    async def push(self, push: ManifestPush) -> Stored:
        """Check and store a manifest, then let the observers act; `OciError` or `PolicyDenied`
        when nothing was stored."""
        return await push_manifest(self.db, self.gate, self.events, self.observers, push)

    async def delete(self, delete: ManifestDelete) -> Deleted:
        """Check and delete a manifest or a tag, then let the observers act; `OciError` or
        `PolicyDenied` when nothing was deleted."""
        return await delete_manifest(self.db, self.gate, self.events, self.observers, delete)

    @property
    def failures(self) -> dict[str, int]:
        """Observer failures after a commit, by observer."""
        return self.observers.failures


__all__ = ["Deleted", "ManifestDelete", "ManifestPipeline", "ManifestPush", "Stored"]
