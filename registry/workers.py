"""`trustyard serve --workers N`: N server processes on one port, and the parent that keeps them.

The parent binds one listening socket per worker slot, all on the same address with
`SO_REUSEPORT`, so the kernel spreads new connections evenly over the slots (one shared socket
would let whichever process wakes first accept a whole burst). The parent keeps every slot's
socket open and never accepts on it: when a worker dies, connections the kernel queued on its
slot wait in the backlog for its replacement instead of being reset.

The parent runs no event loop, opens no database and starts no thread, so that `os.fork` gives
each worker a clean process. It then supervises:

- a worker that exits without being asked is started again in its slot (a slot whose worker
  dies before it is ready `MAX_EARLY_DEATHS` times in a row stops the registry: exit status 1);
- at start, every worker must report ready within `start_timeout`, else all are stopped and
  the parent exits with status 1;
- SIGTERM or SIGINT is passed on to every worker, which finishes its requests in progress
  (`shutdown_timeout`) and exits; the parent exits 0 when all exited 0;
- SIGHUP is passed on (each worker reloads the policy file).

Each worker holds the read end of a pipe whose write end only the parent holds: when the
parent dies (even by SIGKILL) the read end sees end-of-file and the worker stops, so no worker
outlives its supervisor.

Work that must happen once per registry rather than once per process runs in slot 0 only
(`WorkerRole.leader`): the events sender, the stale-upload cleaner, the pull-through cache's
evictor and library sync. Everything else (request handling, the decision-log and pull-event
flushers, which write their own process's buffers, and the policy file watcher, which only
reads) runs in every worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger("trustyard.workers")

#: Whether this process runs the once-per-registry background work (True without workers).
LEADER = web.AppKey("leader", bool)

#: A slot whose worker dies this many times in a row before reporting ready gives up.
MAX_EARLY_DEATHS = 3
#: The pause before starting a worker again (doubled for each early death in a row).
RESTART_DELAY = 0.5


@dataclass(frozen=True)
class WorkerRole:
    """Which worker this process is, told to it by the parent."""

    index: int  # the slot, 0..count-1
    count: int
    ready_fd: int  # written once when listening
    lifeline_fd: int  # end-of-file: the parent is gone

    @property
    def leader(self) -> bool:
        """Whether this worker runs the once-per-registry background work."""
        return self.index == 0

    def report_ready(self) -> None:
        """Tell the parent this worker accepts connections."""
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, b"r")
            os.close(self.ready_fd)


def worker_metrics(role: WorkerRole) -> Callable[[], str]:
    """A `/metrics` section naming the worker that answers (each keeps its own counters)."""
    text = (
        "# HELP trustyard_worker_info The worker process of `serve --workers` that answered.\n"
        "# TYPE trustyard_worker_info gauge\n"
        f'trustyard_worker_info{{worker="{role.index}",workers="{role.count}"}} 1\n'
    )
    return lambda: text


def bind_slots(
    sockets_for: Callable[[int], socket.socket], port: int, count: int
) -> list[socket.socket]:
    """`count` listening sockets on one address: `sockets_for(port)` binds one with
    `SO_REUSEPORT` (with port 0 the system chooses the first's, the others take the same)."""
    first = sockets_for(port)
    slots = [first]
    try:
        port = first.getsockname()[1]
        while len(slots) < count:
            slots.append(sockets_for(port))
    except BaseException:
        for sock in slots:
            sock.close()
        raise
    return slots


@dataclass
class _Slot:
    index: int
    sock: socket.socket
    pid: int = 0
    ready_fd: int = -1  # the parent's read end of the ready pipe
    ready: bool = False
    early_deaths: int = 0
    restart_at: float | None = None
    exit_status: int | None = None


class Supervisor:
    """Forks, watches and stops the workers (see the module's docstring)."""

    def __init__(
        self,
        slots: list[socket.socket],
        run_worker: Callable[[socket.socket, WorkerRole], int],
        *,
        start_timeout: float,
        stop_timeout: float,
        on_ready: Callable[[], None] = lambda: None,
    ) -> None:
        self.slots = [_Slot(i, sock) for i, sock in enumerate(slots)]
        self.run_worker = run_worker
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.on_ready = on_ready
        self.stopping = False
        self.failed = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Only the parent holds the write end: a worker sees end-of-file when the parent dies.
        self._lifeline_r, self._lifeline_w = os.pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._pending: list[int] = []
        self._ever_all_ready = False

    # ------------------------------------------------------------------ the parent's loop

    def run(self) -> int:
        """Start the workers and supervise them until stopped; the exit status."""
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        }
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        try:
            for slot in self.slots:
                self._start(slot)
            started = time.monotonic()
            while not self.stopping:
                self._handle_signals()
                self._reap()
                if self.stopping:
                    break
                if not self._ever_all_ready and time.monotonic() - started > self.start_timeout:
                    log.error("workers not ready after %.0fs: stopping", self.start_timeout)
                    self._stop(failed=True)
                    break
                self._restart_due()
                for key, _ in self._selector.select(timeout=0.2):
                    self._readable(key.fd)
            return 1 if self.failed else self._final_status()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (self._wake_r, self._wake_w, self._lifeline_r, self._lifeline_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            for slot in self.slots:
                slot.sock.close()

    def _final_status(self) -> int:
        statuses = [slot.exit_status or 0 for slot in self.slots]
        return 0 if all(status == 0 for status in statuses) else 1

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Kept tiny: the loop does the work, woken by the wakeup fd.
        self._pending.append(signum)

    def _handle_signals(self) -> None:
        while self._pending:
            signum = self._pending.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                log.info("stop signal: stopping %d workers", len(self.slots))
                self._stop(failed=False)
            elif signum == signal.SIGHUP:
                self._signal_all(signal.SIGHUP)

    def _readable(self, fd: int) -> None:
        if fd == self._wake_r:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
            return
        slot = next(s for s in self.slots if s.ready_fd == fd)
        data = b""
        with contextlib.suppress(OSError):
            data = os.read(fd, 1)
        self._selector.unregister(fd)
        os.close(fd)
        slot.ready_fd = -1
        if data:
            slot.ready = True
            slot.early_deaths = 0
            log.info("worker %d (pid %d) ready", slot.index, slot.pid)
            if all(s.ready for s in self.slots) and not self._ever_all_ready:
                self._ever_all_ready = True
                self.on_ready()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            slot.pid = 0
            slot.exit_status = code
            if slot.ready_fd >= 0:
                self._selector.unregister(slot.ready_fd)
                os.close(slot.ready_fd)
                slot.ready_fd = -1
            if self.stopping:
                log.info("worker %d (pid %d) exited with %d", slot.index, pid, code)
                continue
            how = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
            if not slot.ready:
                slot.early_deaths += 1
                if slot.early_deaths >= MAX_EARLY_DEATHS or not self._ever_all_ready:
                    log.error(
                        "worker %d (pid %d) %s before it was ready: stopping the registry",
                        slot.index,
                        pid,
                        how,
                    )
                    self._stop(failed=True)
                    continue
            delay = RESTART_DELAY * 2 ** max(0, slot.early_deaths - 1)
            log.error("worker %d (pid %d) %s: starting it again", slot.index, pid, how)
            slot.ready = False
            slot.restart_at = time.monotonic() + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.pid == 0 and slot.restart_at is not None and now >= slot.restart_at:
                slot.restart_at = None
                self._start(slot)

    def _stop(self, *, failed: bool) -> None:
        self.stopping = True
        self.failed = self.failed or failed
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        # Bounded: a worker that does not finish within the stop timeout is killed.
        while any(slot.pid for slot in self.slots) and time.monotonic() < deadline:
            self._reap()
            if any(slot.pid for slot in self.slots):
                self._selector.select(timeout=0.1)
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
        for slot in self.slots:
            if slot.pid:
                log.error("worker %d (pid %d) did not stop: killing it", slot.index, slot.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)
        while any(slot.pid for slot in self.slots):
            pid, status = os.waitpid(-1, 0)
            for slot in self.slots:
                if slot.pid == pid:
                    slot.pid = 0
                    slot.exit_status = os.waitstatus_to_exitcode(status)

    def _signal_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    # ------------------------------------------------------------------ one worker

    def _start(self, slot: _Slot) -> None:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                code = self._become_worker(slot, ready_r, ready_w)
            except BaseException:
                log.exception("worker %d failed", slot.index)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(ready_w)
        slot.pid = pid
        slot.ready = False
        slot.exit_status = None
        slot.ready_fd = ready_r
        self._selector.register(ready_r, selectors.EVENT_READ)
        log.info("started worker %d (pid %d)", slot.index, pid)

    def _become_worker(self, slot: _Slot, ready_r: int, ready_w: int) -> int:
        # Undo the parent's signal set-up: the worker's event loop installs its own handlers.
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.close(ready_r)
        os.close(self._lifeline_w)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        for other in self.slots:
            if other.index != slot.index:
                other.sock.close()
            if other.ready_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(other.ready_fd)
        role = WorkerRole(slot.index, len(self.slots), ready_w, self._lifeline_r)
        return self.run_worker(slot.sock, role)
