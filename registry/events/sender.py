"""The sender: a background task that delivers outbox rows to their endpoints.

At least once: a row is deleted only after its endpoint answered 2xx, so a crash between the
answer and the delete sends it again (receivers deduplicate by the CloudEvents `id`). Once per
process group: every worker and replica runs a sender over the one outbox, and each row is
claimed (`Outbox.claim`, a conditional update) before it is sent, so exactly one of them sends
it; one that dies holding a claim leaves the row to the others when the claim runs out. In order per
(endpoint, repository): only the oldest pending row of a pair is ever in flight. Failures wait
`events.retry` backoff (doubling from `initial` up to `max`) and are given up (state `failed`,
listed by `GET /api/v1/events/deliveries`) after `give_up_after`. Pushes never wait for any of
this: they only write rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp

from registry.events import signing
from registry.events.outbox import Delivery, Outbox
from registry.events.settings import Endpoint, EventSettings

log = logging.getLogger("trustyard.events")

#: How often the outbox is looked at when nothing wakes the sender (rows written by another
#: process, retries coming due).
POLL_INTERVAL = 1.0
#: Deliveries in flight at once, across all (endpoint, repository) pairs.
CONCURRENCY = 16

#: A claimed row is held this much longer than its endpoint's timeout: a sender that dies while
#: sending leaves it to another process after that.
CLAIM_MARGIN = 30.0

CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"


class Sender:
    """Delivers outbox rows until closed."""

    def __init__(self, outbox: Outbox, settings: EventSettings) -> None:
        self.outbox = outbox
        self.settings = settings
        self.endpoints = {e.name: e for e in settings.endpoints}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._active: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(CONCURRENCY)

    def start(self) -> None:
        """Start delivering in the background."""
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop; rows not delivered stay in the outbox for the next start."""
        tasks = [t for t in (self._task, *self._active.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            self.outbox.wakeup.clear()
            wait = POLL_INTERVAL
            try:
                now = time.time()
                for head in await self.outbox.heads():
                    key = (head.endpoint, head.repository)
                    if key in self._active:
                        continue
                    if head.next_attempt_at > now:
                        wait = min(wait, head.next_attempt_at - now)
                        continue
                    task = asyncio.create_task(self._drain(key, head))
                    self._active[key] = task
            except Exception:
                log.exception("reading the event outbox failed")
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives as the wake-up is set (a drain's `finally` notifies while close()
            # cancels), and this loop would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.01)):
                    await self.outbox.wakeup.wait()

    async def _drain(self, key: tuple[str, str], head: Delivery) -> None:
        """Deliver a pair's rows in order until one fails or none is due."""
        try:
            delivery: Delivery | None = head
            while delivery is not None:
                if not await self._deliver(delivery):
                    return
                delivery = next(
                    (
                        h
                        for h in await self.outbox.heads()
                        if (h.endpoint, h.repository) == key and h.next_attempt_at <= time.time()
                    ),
                    None,
                )
        except Exception:
            log.exception("delivering events to %s failed", key[0])
        finally:
            self._active.pop(key, None)
            self.outbox.notify()

    async def _deliver(self, delivery: Delivery) -> bool:
        """Send one row; whether it was delivered (or given up, so the pair may go on); False
        also when another process holds it."""
        endpoint = self.endpoints.get(delivery.endpoint)
        if endpoint is None:
            await self.outbox.failed_attempt(
                delivery, f"endpoint {delivery.endpoint} is no longer configured", give_up=True
            )
            return True
        async with self._slots:
            # Taken before it is sent: of the processes sharing the outbox, one sends it.
            if not await self.outbox.claim(delivery, endpoint.timeout + CLAIM_MARGIN):
                return False
            error = await self._post(endpoint, delivery)
        if error is None:
            await self.outbox.delivered(delivery.id)
            return True
        give_up = time.time() - delivery.created_at > self.settings.give_up_after
        log.warning(
            "event %d to %s failed (attempt %d)%s: %s",
            delivery.id,
            endpoint.name,
            delivery.attempts + 1,
            "; giving up" if give_up else "",
            error,
        )
        await self.outbox.failed_attempt(delivery, error, give_up=give_up)
        return give_up

    async def _post(self, endpoint: Endpoint, delivery: Delivery) -> str | None:
        """POST the body; None on a 2xx answer, else what went wrong."""
        assert self._session is not None
        headers = {
            **endpoint.headers,
            "Content-Type": CONTENT_TYPE,
            "Trustyard-Delivery": str(delivery.id),
        }
        if endpoint.secret:
            headers.update(signing.sign(endpoint.secret, delivery.body))
        try:
            async with self._session.post(
                endpoint.url,
                data=delivery.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=endpoint.timeout),
                allow_redirects=False,
            ) as resp:
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except TimeoutError:
            return f"no answer within {endpoint.timeout:g}s"
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {exc}"
