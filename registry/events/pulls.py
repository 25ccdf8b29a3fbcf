"""Pull events, which would drown endpoints if each were sent: `events.pull_events.mode`
`sampled` sends a share (`rate`) of pulls as they happen; `aggregated` (the default) counts pulls
per (repository, digest) in memory and sends one `image.pulled` event with the count every
`interval` (counts not yet sent are lost if the process dies: pulls change nothing stored);
`off` sends none."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass

from registry.events.cloudevents import Event, manifest_data, subject
from registry.events.outbox import Outbox

log = logging.getLogger("trustyard.events")


@dataclass
class _Count:
    media_type: str
    size: int
    count: int
    tags: set[str]
    actors: set[str]


class PullReporter:
    """Turns pulls into `image.pulled` events, sampled or aggregated."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.settings = outbox.settings
        self._counts: dict[tuple[str, str], _Count] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """Whether pull events are sent at all (and some endpoint wants them)."""
        return self.settings.pull_mode != "off" and any(
            e.wants("image.pulled") for e in self.settings.endpoints
        )

    def start(self) -> None:
        """Start sending aggregated counts every interval."""
        if self.enabled and self.settings.pull_mode == "aggregated":
            self._task = asyncio.create_task(self._flush_forever())

    async def close(self) -> None:
        """Stop, sending the counts gathered so far."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def pulled(
        self, repository: str, tag: str | None, digest: str, media_type: str, size: int, actor: str
    ) -> None:
        """Note one pull of a manifest."""
        if not self.enabled:
            return
        if self.settings.pull_mode == "sampled":
            if random.random() < self.settings.pull_rate:
                data = manifest_data(
                    tag=tag, digest=digest, media_type=media_type, size=size, actor=actor
                )
                await self.outbox.append(
                    [Event("image.pulled", repository, data, subject(repository, tag, digest))]
                )
            return
        entry = self._counts.get((repository, digest))
        if entry is None:
            entry = self._counts[(repository, digest)] = _Count(media_type, size, 0, set(), set())
        entry.count += 1
        if tag:
            entry.tags.add(tag)
        entry.actors.add(actor)

    async def flush(self) -> None:
        """Send one event per (repository, digest) pulled since the last flush."""
        counts, self._counts = self._counts, {}
        events = [
            Event(
                "image.pulled",
                repository,
                {
                    **manifest_data(
                        tag=None,
                        digest=digest,
                        media_type=c.media_type,
                        size=c.size,
                        actor=", ".join(sorted(c.actors)),
                    ),
                    "count": c.count,
                    "tags": sorted(c.tags),
                    "interval": self.settings.pull_interval,
                },
                subject(repository, None, digest),
            )
            for (repository, digest), c in counts.items()
        ]
        if events:
            await self.outbox.append(events)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.pull_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("writing pull events failed")
