"""An upstream answering 429 Too Many Requests: its `Retry-After` is honoured (bounded), nothing
is sent to it meanwhile, cached tags are served stale within the window, uncached ones are
refused with 429 and a `Retry-After`, and /metrics counts it all."""

from __future__ import annotations

import asyncio
import email.utils
import time

import pytest
import time_machine

from registry.context import CONTEXT
from registry.proxy.client import (
    MAX_BACKOFF,
    MIN_BACKOFF,
    RateLimited,
    UpstreamClient,
    retry_after_seconds,
)
from registry.upstream_settings import Upstream
from tests.proxy.upstreams import PASSWORD, USER, proxy_config, random_layer, sha256


def metric(text: str, name: str) -> float:
    """The value of the metric line starting with `name` (labels included)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


async def test_429_backs_off_serves_stale_and_never_hammers(start_client, front, upstream):
    await upstream.push_image("team/app", "v1", [random_layer(10_000)])
    await upstream.push_image("team/other", "v1", [random_layer(10_000)])
    config = proxy_config(front.url, None, manifest_ttl="1h", stale_if_error="1d")
    client = await start_client(**config)
    # The registry's wall clock is held and moved: the TTL runs out when the test says so, and
    # however slow the machine, every request below is sent while the 5 s pause lasts.
    with time_machine.travel(int(time.time()), tick=False) as clock:
        first = await client.get("/v2/mirror.test/team/app/manifests/v1")
        assert first.status == 200
        digest = first.headers["Docker-Content-Digest"]
        asked = sum(front.requests.values())

        front.too_many, front.retry_after = True, "5"
        # Inside the TTL the upstream is not asked; once it passed, the revalidating HEAD
        # meets the 429: the copy is served stale.
        clock.shift(3599)
        inside = await client.get("/v2/mirror.test/team/app/manifests/v1")
        assert inside.status == 200 and "Warning" not in inside.headers
        assert sum(front.requests.values()) == asked
        clock.shift(2)
        resp = await client.get("/v2/mirror.test/team/app/manifests/v1")
        assert resp.status == 200
        assert resp.headers["Docker-Content-Digest"] == digest
        stale = '110 trustyard "Response is Stale: rate limited (429): backing off'
        assert resp.headers["Warning"].startswith(stale)
        reached = sum(front.requests.values())

        # While the pause lasts nothing reaches the upstream: stale copies, and a 429 with
        # Retry-After for what is not cached.
        for _ in range(10):
            again = await client.get("/v2/mirror.test/team/app/manifests/v1")
            assert again.status == 200 and "Warning" in again.headers
        uncached = await client.get("/v2/mirror.test/team/other/manifests/v1")
        assert uncached.status == 429
        body = await uncached.json()
        assert body["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert "rate limited (429): backing off" in body["errors"][0]["message"]
        assert uncached.headers["Retry-After"] == "5"  # the clock did not move: all of it left
        assert sum(front.requests.values()) == reached

        metrics = await (await client.get("/metrics")).text()
        assert metric(metrics, 'trustyard_proxy_upstream_rate_limited_total{upstream="ref"}') == 1
        assert metric(metrics, 'trustyard_proxy_upstream_held_back_total{upstream="ref"}') >= 11
        assert metric(metrics, 'trustyard_proxy_upstream_backoff_seconds{upstream="ref"}') == 5
        assert metric(metrics, 'trustyard_proxy_events_total{event="stale_served"}') >= 11

        # The upstream recovers; once the pause is over the tag is confirmed fresh again.
        front.too_many = False
        clock.shift(4)
        assert "Warning" in (await client.get("/v2/mirror.test/team/app/manifests/v1")).headers
        assert sum(front.requests.values()) == reached  # a second of the pause is left
        clock.shift(1)
        resp = await client.get("/v2/mirror.test/team/app/manifests/v1")
        assert resp.status == 200 and "Warning" not in resp.headers
        assert sum(front.requests.values()) > reached
        assert (await client.get("/v2/mirror.test/team/other/manifests/v1")).status == 200


def _upstream(url: str) -> Upstream:
    return Upstream(
        name="front",
        url=url,
        prefix="mirror.test",
        username=USER,
        password=PASSWORD,
        ca_file=None,
        connect_timeout=2.0,
        read_timeout=5.0,
    )


async def _rate_limited(client: UpstreamClient) -> RateLimited:
    with pytest.raises(RateLimited) as raised:
        await client.request("GET", "team/app", "manifests/v1")
    return raised.value


def _wait_out(client: UpstreamClient, clock: time_machine.Coordinates) -> None:
    """Move the held clock to the end of the upstream's pause."""
    clock.shift(client.backoff_left())
    assert client.backoff_left() == 0


@pytest.mark.parametrize(
    ("retry_after", "pause"),
    [
        ("86400", MAX_BACKOFF),  # a day: bounded
        ("0", MIN_BACKOFF),  # never "hammer at once"
        ("soon", MIN_BACKOFF),  # unreadable: the first doubling step
        ("7", 7),
    ],
)
async def test_retry_after_is_bounded(front, retry_after, pause):
    front.too_many, front.retry_after = True, retry_after
    client = UpstreamClient(_upstream(front.url))
    # The wall clock is held: the pause left is exactly what was set, however slow the machine.
    with time_machine.travel(int(time.time()), tick=False) as clock:
        try:
            refused = await _rate_limited(client)
            assert refused.retry_after == pause
            assert client.backoff_left() == pause
            assert sum(front.requests.values()) == 1
            clock.shift(pause - 1)
            held = await _rate_limited(client)  # not sent: a second of the pause is left
            assert sum(front.requests.values()) == 1 and client.held_back == 1
            assert held.retry_after == 1
        finally:
            await client.close()


async def test_without_retry_after_the_pause_doubles(front, upstream):
    await upstream.push_image("team/app", "v1", [random_layer(1000)])
    front.too_many = True
    client = UpstreamClient(_upstream(front.url))
    # The wall clock is held and moved to each pause's end: however slow the machine, the burst
    # is answered inside its pause and each later 429 comes after the last one ended.
    with time_machine.travel(int(time.time()), tick=False) as clock:
        try:
            # Requests sent together and refused together are one 429 for the pause.
            burst = await asyncio.gather(*(_rate_limited(client) for _ in range(8)))
            assert client.rate_limited == sum(front.requests.values()) == 8
            assert all(r.retry_after == MIN_BACKOFF for r in burst)
            assert client.backoff_left() == MIN_BACKOFF
            # The next 429 after the pause: twice as long.
            _wait_out(client, clock)
            assert (await _rate_limited(client)).retry_after == 2 * MIN_BACKOFF
            assert client.rate_limited == sum(front.requests.values()) == 9
            # A success ends the streak: the next 429 pauses for the shortest time again.
            _wait_out(client, clock)
            front.too_many = False
            ok = await client.request("GET", "team/app", "manifests/v1")
            ok.release()
            front.too_many = True
            assert (await _rate_limited(client)).retry_after == MIN_BACKOFF
        finally:
            await client.close()


def test_retry_after_reads_seconds_and_http_dates():
    now = time.time()
    assert retry_after_seconds("120", now) == 120
    in_a_minute = email.utils.formatdate(now + 60, usegmt=True)
    assert retry_after_seconds(in_a_minute, now) == pytest.approx(60, abs=1.5)
    for unreadable in (None, "", "-5", "1.5", "tomorrow", "Wed, 21 Oct 2015 07:28:00"):
        assert retry_after_seconds(unreadable, now) is None


async def test_uncached_blob_during_a_pause_answers_429_with_retry_after(
    start_client, front, upstream
):
    layer = random_layer(50_000)
    await upstream.push_image("team/app", "v1", [layer])
    client = await start_client(**proxy_config(front.url, None))
    assert (await client.get("/v2/mirror.test/team/app/manifests/v1")).status == 200
    digest = sha256(layer)
    path = f"/v2/mirror.test/team/app/blobs/{digest}"

    # The wall clock is held and moved: however slow the machine, every request of the pause
    # is sent while it lasts.
    with time_machine.travel(int(time.time()), tick=False) as clock:
        # The blob's GET meets the 429: the client is told how long the pause lasts.
        front.too_many, front.retry_after = True, "3"
        refused = await client.get(path)
        assert refused.status == 429
        error = (await refused.json())["errors"][0]
        assert error["code"] == "TOOMANYREQUESTS"
        assert (
            "the upstream asked for a pause (429) and this blob is not cached" in error["message"]
        )
        assert refused.headers["Retry-After"] == "3"
        assert "for 3s more" in error["message"]
        assert front.blob_gets(digest) == 1
        # During the pause: a GET and a byte range of it are refused alike, nothing sent upstream.
        clock.shift(2)
        again = await client.get(path)
        ranged = await client.get(path, headers={"Range": "bytes=0-99"})
        for resp in (again, ranged):
            assert resp.status == 429
            assert (await resp.json())["errors"][0]["code"] == "TOOMANYREQUESTS"
            assert resp.headers["Retry-After"] == "1"
        assert front.blob_gets(digest) == 1
        assert await client.app[CONTEXT].db.blob_size(digest) is None

        # Once the pause is over, the blob is fetched and served.
        front.too_many = False
        clock.shift(1)
        served = await client.get(path)
        assert served.status == 200 and await served.read() == layer
        assert front.blob_gets(digest) == 2


async def test_a_manifests_config_refused_by_a_pause_answers_429_with_retry_after(
    start_client, front, upstream
):
    await upstream.push_image("team/app", "v1", [random_layer(1000)])
    client = await start_client(**proxy_config(front.url, None))
    # The wall clock is held and moved: however slow the machine, the second request is sent
    # while the pause lasts.
    with time_machine.travel(int(time.time()), tick=False) as clock:
        # The manifest comes; its config blob (fetched before the policy decides) meets the 429.
        front.too_many, front.too_many_only, front.retry_after = True, "/blobs/", "3"
        refused = await client.get("/v2/mirror.test/team/app/manifests/v1")
        assert refused.status == 429
        error = (await refused.json())["errors"][0]
        assert error["code"] == "TOOMANYREQUESTS"
        assert "rate limited (429): backing off, retry in" in error["message"]
        assert "mirror.test/team/app:v1 is not cached" in error["message"]
        assert refused.headers["Retry-After"] == "3"
        reached = sum(front.requests.values())
        clock.shift(2)
        held = await client.get("/v2/mirror.test/team/app/manifests/v1")
        assert held.status == 429 and held.headers["Retry-After"] == "1"
        assert sum(front.requests.values()) == reached  # nothing sent during the pause
        front.too_many = False
        clock.shift(1)
        assert (await client.get("/v2/mirror.test/team/app/manifests/v1")).status == 200
