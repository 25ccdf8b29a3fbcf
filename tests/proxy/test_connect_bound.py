"""The upstream's connect bound counts the upstream's silence, not this process's pauses.

A pause of the registry's own process (a garbage collection of a large heap, a machine too busy
to run it) that spans the connect deadline used to fail the pull with "timed out" although the
upstream had accepted the connection at once: the deadline's timer and the finished connect
were taken in by the same turn of the event loop, and the timer won. The pause is made here by
holding the event loop (`time.sleep`) right after the connect to the upstream has started, so
the kernel completes the handshake while the process is held up. An upstream that accepts
nothing (a listener whose backlog is full: the kernel drops its SYNs) still fails the pull
within the bound."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from registry.proxy.routing import PROXY
from tests.proxy.upstreams import proxy_config

NAME = "mirror.test/team/app"
CONNECT_TIMEOUT = 0.5
PAUSE = 3 * CONNECT_TIMEOUT  # the process is held up past the deadline


def pause_on_connect(monkeypatch: pytest.MonkeyPatch, port: int, pauses: list[float]) -> None:
    """Hold the event loop for `PAUSE` seconds right after a connect to `port` has started
    (once), as a stop-the-world pause of the process would; `pauses` records it."""
    loop = asyncio.get_running_loop()
    real = loop.sock_connect

    async def sock_connect(sock: socket.socket, address: Any) -> None:
        if address[1] != port or pauses:
            return await real(sock, address)
        connecting = asyncio.ensure_future(real(sock, address))
        await asyncio.sleep(0)  # the SYN is sent: the kernel completes the handshake alone
        started = time.monotonic()
        time.sleep(PAUSE)  # the whole process is held up, event loop included
        pauses.append(time.monotonic() - started)
        return await connecting

    monkeypatch.setattr(loop, "sock_connect", sock_connect)


async def test_a_pause_of_the_registry_past_the_connect_deadline_is_not_an_upstream_timeout(
    start_client, front, upstream, monkeypatch
):
    await upstream.push_image("team/app", "v1", [b"layer"])
    config = proxy_config(front.url, None)
    config["upstreams"][0]["connect_timeout"] = f"{CONNECT_TIMEOUT}s"
    client = await start_client(**config)
    pauses: list[float] = []
    pause_on_connect(monkeypatch, front.port, pauses)

    resp = await client.get(f"/v2/{NAME}/manifests/v1")
    assert pauses and pauses[0] >= PAUSE  # the pause happened, and outlasted the bound
    assert resp.status == 200, await resp.text()
    # Seen as this process's pause (once, or more should the busy machine hold it up again).
    waited_out = client.app[PROXY].clients["ref"].connects_waited_out
    assert waited_out >= 1
    metrics = await (await client.get("/metrics")).text()
    assert f'trustyard_proxy_upstream_connects_waited_out_total{{upstream="ref"}} {waited_out}' in (
        metrics
    )


@pytest.fixture
def silent_upstream() -> Iterator[str]:
    """The URL of a listener that accepts no connection: its backlog (0) is taken by one
    connection never accepted, so the kernel drops every later SYN and a connect hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        filler.close()
        listener.close()


async def test_an_upstream_that_accepts_no_connection_fails_the_pull_within_the_bound(
    start_client, silent_upstream
):
    config = proxy_config(silent_upstream, None)
    config["upstreams"][0]["connect_timeout"] = f"{CONNECT_TIMEOUT}s"
    client = await start_client(**config)

    started = time.monotonic()
    resp = await asyncio.wait_for(client.get(f"/v2/{NAME}/manifests/v1"), 30)
    waited = time.monotonic() - started
    assert resp.status == 503
    body = await resp.json()
    assert body["errors"][0]["code"] == "UNAVAILABLE"
    assert "connect timed out" in body["errors"][0]["message"]
    assert waited >= CONNECT_TIMEOUT  # the upstream had its bound
