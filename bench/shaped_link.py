"""A loopback port shaped like a WAN link, for benchmarks whose upstream would be remote.

A real upstream registry (Docker Hub, ghcr.io, a vendor's) is reached over a network far slower
than loopback; a benchmark whose upstream runs on 127.0.0.1 measures something no user sees.
`shaped_port` slows the traffic of one TCP port on `lo` — both directions — with Linux traffic
control, and nothing else on the machine:

    lo root  htb (handle 1:, no default class: unmatched packets go straight through, unshaped)
             class 1:30  htb rate RATE            <- u32 filters: sport PORT, dport PORT
                 leaf 30:  netem delay DELAY (with a delay; else pfifo)

Other loopback traffic (other tests, other servers) is not classified and is sent directly.
The qdisc is removed on leaving the context and, should the process end otherwise, at exit.
Two shapers on one machine take turns (a lock file in /run/lock) rather than meet on `lo`.
It is refused (SystemExit with the reason) when `tc` is missing, when not run as root, when the
kernel lacks a queueing discipline it needs (`netem` for a delay), or when `lo` already has a
root qdisc of its own (someone else's shaping is never replaced).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator

DEVICE = "lo"
#: Where Debian and most distributions install `tc` (root's PATH has it; others may not).
TC_PATHS = ("/usr/sbin/tc", "/sbin/tc")
#: Held while `lo` is shaped by this module.
LOCK = "/run/lock/trustyard-shaped-lo.lock"


def tc_binary() -> str:
    """The `tc` program, or SystemExit saying why shaping cannot be done here."""
    found = shutil.which("tc") or next((p for p in TC_PATHS if os.access(p, os.X_OK)), None)
    if found is None:
        raise SystemExit("--upstream-rate/--upstream-delay need Linux `tc` (iproute2): not found")
    if os.geteuid() != 0:
        raise SystemExit("--upstream-rate/--upstream-delay need root (`tc` changes `lo`)")
    return found


def _tc(tc: str, *args: str) -> str:
    done = subprocess.run([tc, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"tc {' '.join(args)} failed: {done.stderr.strip() or done.stdout}")
    return done.stdout


def root_qdisc(tc: str) -> str:
    """What `tc qdisc show dev lo` says of its root (e.g. `qdisc noqueue 0: root refcnt 2`)."""
    return _tc(tc, "qdisc", "show", "dev", DEVICE).strip()


@contextlib.contextmanager
def shaped_port(port: int, *, rate: str | None, delay: str | None) -> Iterator[str]:
    """Shape TCP port `port` on `lo` (to `rate`, e.g. `1gbit`, and/or `delay` each way, e.g.
    `1ms`) while the context runs; yields a description of the link."""
    tc = tc_binary()
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with _shaped(tc, port, rate=rate, delay=delay) as link:
            yield link


@contextlib.contextmanager
def _shaped(tc: str, port: int, *, rate: str | None, delay: str | None) -> Iterator[str]:
    before = root_qdisc(tc)
    if before and not before.startswith(("qdisc noqueue", "qdisc pfifo_fast 0:")):
        raise SystemExit(f"lo already has a root qdisc of its own, left alone: {before}")
    # Without a rate the class still needs one: far above what loopback carries.
    shape = ["rate", rate or "100gbit", "ceil", rate or "100gbit", "quantum", "65536"]
    leaf = ["netem", "limit", "100000", "delay", delay] if delay else ["pfifo", "limit", "100000"]
    removed = False

    def remove() -> None:
        nonlocal removed
        if not removed:
            removed = True
            subprocess.run(
                [tc, "qdisc", "del", "dev", DEVICE, "root"], capture_output=True, check=False
            )

    atexit.register(remove)
    try:
        _tc(tc, "qdisc", "add", "dev", DEVICE, "root", "handle", "1:", "htb")
        _tc(tc, "class", "add", "dev", DEVICE, "parent", "1:", "classid", "1:30", "htb", *shape)
        try:
            _tc(tc, "qdisc", "add", "dev", DEVICE, "parent", "1:30", "handle", "30:", *leaf)
        except SystemExit as exc:
            if delay and "unknown" in str(exc):
                raise SystemExit(
                    "--upstream-delay needs the kernel's netem queueing discipline (sch_netem), "
                    f"which this kernel lacks ({exc}); --upstream-rate alone works without it"
                ) from None
            raise
        for side in ("sport", "dport"):
            _tc(tc, "filter", "add", "dev", DEVICE, "parent", "1:", "protocol", "ip", "prio",
                "1", "u32", "match", "ip", side, str(port), "0xffff", "flowid", "1:30")  # fmt: skip
        yield (
            f"upstream port {port} on lo shaped to "
            + ", ".join(
                part
                for part in (rate and f"{rate} each way", delay and f"{delay} delay each way")
                if part
            )
        )
    finally:
        remove()
        atexit.unregister(remove)
