"""The files every replica must read alike: the policy and the users file.

Both are read from each machine's own disk (a ConfigMap and a Secret mounted into every pod, one
file copied to every host), yet they decide every request: a user removed from one replica's
users file, or a weaker policy on one replica, would still be let in through that replica. The
database is what the replicas share, so each serving process records in it, every few seconds,
the digests of the two files as it runs them (`Coordination.announce_files`; the policy's
version covers the files it references), and compares them with those of every other process
heard of lately:

* **At start** a replica that would run other files than a live replica refuses to start
  (`FilesDiffer`, exit status 2), saying which file differs from which replica's, and how to
  fix it: a replica never joins a registry whose others decide differently.
* **While serving** (a file changed on one machine and not yet on another, as while a ConfigMap
  update reaches the pods one after the other), each replica logs an error naming both digests
  when the difference appears, again every minute while it lasts, and once more when it is over.
  It keeps serving: which side is right cannot be known here, and refusing on both sides would
  stop the whole registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from registry.preflight import OperatorError
from storage.metadata import MetadataDB
from storage.metadata.coordination import InstanceFiles

log = logging.getLogger("trustyard.replicas")

#: How often a serving process records its files (seconds).
HEARTBEAT = 5.0
#: A process not heard of for this long is gone (missed three heartbeats).
LIVE_WITHIN = 3 * HEARTBEAT
#: How often a difference that lasts is logged again.
REPEAT = 60.0


class FilesDiffer(OperatorError):
    """A starting replica's policy or users file differs from a live replica's."""


def instance_name() -> str:
    """This serving process, as the others see it."""
    return f"{socket.gethostname()} {os.getpid()}"


def users_digest(users_file: Path | None) -> str:
    """The users file's digest ('none' without auth, 'missing' when the file is absent)."""
    if users_file is None:
        return "none"
    try:
        return "sha256:" + hashlib.sha256(users_file.read_bytes()).hexdigest()
    except FileNotFoundError:
        return "missing"


def differences(mine: dict[str, str], others: list[InstanceFiles], me: str) -> list[str]:
    """One sentence per file another live process runs differently."""
    found = []
    for other in others:
        if other.instance == me:
            continue
        for name in sorted(mine):
            theirs = other.files.get(name)
            if theirs is not None and theirs != mine[name]:
                found.append(
                    f"the {name} file differs from replica {other.instance!r}'s: it runs "
                    f"{theirs[:19]}, this one {mine[name][:19]}"
                )
    return found


def _advice(found: list[str]) -> str:
    return (
        "; ".join(found) + ". Every replica must read the same policy and users file (one "
        "ConfigMap and one Secret mounted into every replica, or one copy on every host): "
        "change them in place on every replica (each reloads them), never one replica alone"
    )


async def refuse_to_join(db: MetadataDB, files: dict[str, str], me: str) -> None:
    """At start: `FilesDiffer` when a live replica runs other files than `files`."""
    found = differences(files, await db.live_files(time.time() - LIVE_WITHIN), me)
    if found:
        raise FilesDiffer(f"not starting: {_advice(found)}")


class FilesWatch:
    """Records this process's files every `HEARTBEAT` and logs a difference with the others."""

    def __init__(self, db: MetadataDB, files: Callable[[], dict[str, str]], me: str) -> None:
        self.db = db
        self.files = files
        self.me = me
        self._task: asyncio.Task[None] | None = None
        self._reported: tuple[str, ...] = ()
        self._reported_at = 0.0

    async def check(self) -> list[str]:
        """Record this process's files now and compare them with the others' (logged)."""
        mine = await asyncio.to_thread(self.files)
        now = time.time()
        await self.db.announce_files(self.me, mine, now)
        found = differences(mine, await self.db.live_files(now - LIVE_WITHIN), self.me)
        key = tuple(found)
        if found and (key != self._reported or now - self._reported_at >= REPEAT):
            log.error("replicas disagree: %s", _advice(found))
            self._reported_at = now
        elif not found and self._reported:
            log.info("replicas agree again on the policy and users files")
        self._reported = key
        return found

    def start(self) -> None:
        """Check every `HEARTBEAT` until closed."""
        self._task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self.check()
            except Exception:
                log.exception("recording this replica's policy and users files failed")

    async def close(self) -> None:
        """Stop, and take this process off the record (a stopped replica disagrees with none)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.db.forget_instance(self.me)
