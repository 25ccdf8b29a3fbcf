"""The benchmark's shaped upstream link (`bench.shaped_link`): only the named port's traffic goes
through the shaped class, at no more than its rate, and `lo` is as it was afterwards (also when
the body fails, and when a delay needs a queueing discipline the kernel lacks)."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from bench.shaped_link import DEVICE, root_qdisc, shaped_port, tc_binary

SIZE = 16 * 1024 * 1024
#: 16 MiB at 200 Mbit/s takes at least 0.67 s.
RATE, BITS_PER_SECOND = "200mbit", 200e6


@pytest.fixture
def senders() -> Iterator[list[int]]:
    """Two listening ports on 127.0.0.1, each sending SIZE bytes to whoever connects."""
    listeners = []
    for _ in range(2):
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve(listener: socket.socket = listener) -> None:
            with listener:
                while True:
                    try:
                        connection, _ = listener.accept()
                    except OSError:
                        return
                    with connection:
                        connection.sendall(b"x" * SIZE)

        threading.Thread(target=serve, daemon=True).start()
    yield [listener.getsockname()[1] for listener in listeners]
    for listener in listeners:
        listener.close()


def receive(port: int) -> tuple[int, float]:
    """Bytes received from `port` until it closes, and the seconds it took."""
    started = time.perf_counter()
    received = 0
    with socket.create_connection(("127.0.0.1", port)) as connection:
        while data := connection.recv(1 << 20):
            received += len(data)
    return received, time.perf_counter() - started


def shaped_class_bytes() -> int:
    """Bytes sent through the shaped class (1:30) so far."""
    shown = subprocess.run(
        [tc_binary(), "-s", "class", "show", "dev", DEVICE], capture_output=True, text=True
    ).stdout
    found = re.search(r"class htb 1:30 .*?\n\s*Sent (\d+) bytes", shown)
    assert found, shown
    return int(found.group(1))


def test_only_the_shaped_port_goes_through_the_link_at_its_rate(senders: list[int]):
    shaped, other = senders
    before = root_qdisc(tc_binary())
    with shaped_port(shaped, rate=RATE, delay=None) as link:
        assert f"port {shaped}" in link and RATE in link
        assert receive(other)[0] == SIZE
        assert shaped_class_bytes() < 64 * 1024  # the other port's 16 MiB went around it
        received, seconds = receive(shaped)
        assert received == SIZE
        assert seconds >= 0.9 * SIZE * 8 / BITS_PER_SECOND
        assert SIZE <= shaped_class_bytes() < SIZE * 1.1  # its bytes and headers, no more
    assert root_qdisc(tc_binary()) == before


def test_lo_is_restored_when_the_body_fails_or_a_delay_cannot_be_had(senders: list[int]):
    before = root_qdisc(tc_binary())
    with pytest.raises(RuntimeError), shaped_port(senders[0], rate=RATE, delay=None):
        raise RuntimeError("the benchmark failed")
    assert root_qdisc(tc_binary()) == before
    try:
        with shaped_port(senders[0], rate=None, delay="1ms"):
            assert (
                "netem"
                in subprocess.run(
                    [tc_binary(), "qdisc", "show", "dev", DEVICE], capture_output=True, text=True
                ).stdout
            )
    except SystemExit as refused:  # this kernel has no netem: said so, nothing left behind
        assert "netem" in str(refused) and "--upstream-rate alone works" in str(refused)
    assert root_qdisc(tc_binary()) == before
