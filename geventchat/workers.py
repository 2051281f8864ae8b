"""Pre-forked workers: one supervising parent, N worker processes each with its own gevent hub and ChatServer.

The parent runs no gevent at all: it binds the listening sockets, forks the workers, and then only waits
(``selectors`` on the signal wake-up pipe and one control socket per worker) and reaps. Worker *slots* are
numbered ``0..N-1``; the parent binds one ``SO_REUSEPORT`` listening socket per slot (the first learns the
concrete port for port 0) and keeps it open, and the worker in that slot inherits it. The kernel spreads new
connections over the slots' accept queues; ``--max-connections`` and the open-file limit apply to each worker.
Because the parent holds every slot's socket, a replacement worker takes over the same accept queue: connections
that arrive while a slot's worker restarts wait in the queue instead of being refused or reset.
The slots' sockets are :class:`~geventchat._slots.SlotSockets`; forking a worker, the control socket's messages and
the table of live workers are in :mod:`geventchat._forking`; what a worker runs is :mod:`geventchat._worker`.

- Readiness: a worker writes ``ready`` on its control socket once it serves; the parent prints the one line
  ``geventchat listening on HOST:PORT`` after every worker has done so, and tells systemd ``READY=1``
  (:mod:`geventchat.systemd`).
- Heartbeat: a worker writes ``alive`` on its control socket every quarter of ``worker_timeout``; one silent for
  ``worker_timeout`` seconds (a hung hub, a stopped process) is killed with SIGKILL and counts as a crash. A
  worker that is not ready within :attr:`Supervisor.start_timeout` is treated the same way.
- SIGTERM/SIGINT: ``STOPPING=1`` to systemd, then SIGTERM to every worker, which shuts down gracefully (every
  client gets ``bye: server shutting down``); the parent exits 0 once all workers exited 0. A second signal kills
  the workers and exits 1.
- SIGHUP: graceful replacement, as gunicorn does it. A new worker starts in every slot, sharing the slot's socket
  with the old one; once all new workers are ready the old ones get SIGTERM and drain (``bye: server shutting
  down``, up to the grace period). No connection is refused: the sockets never close. With ``--metrics-port``,
  slot *i*'s old worker first closes its metrics endpoint (port ``METRICS_PORT + i``) so the new one can bind it;
  the endpoint is gone for that moment. systemd hears ``RELOADING=1`` and ``READY=1`` when done.
- SIGTTIN adds a worker (a new slot); SIGTTOU removes the highest slot (never the last): its worker gets SIGTERM
  and drains, and its socket closes, so connections still queued there at that instant are reset (Linux moves
  them to another socket of the port only with ``sysctl net.ipv4.tcp_migrate_req=1``).
- Crashes: a worker that exits while the server is running is restarted after an exponential back-off. More than
  :attr:`Supervisor.max_crashes` crashes within :attr:`Supervisor.crash_window` seconds: the parent stops the
  other workers and exits 1 (the rule is :class:`~geventchat.restart_policy.RestartPolicy`).
- The parent dying (even by SIGKILL) closes its ends of the control sockets; each worker sees end of file and
  shuts down gracefully rather than living on unsupervised.
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
from typing import NoReturn

from . import systemd
from ._forking import (
    FORWARDED,
    READY,
    RELEASE_METRICS,
    RELEASED,
    WATCHED,
    WorkerProcess,
    WorkerTable,
    become_worker,
    describe_status,
    fork_worker,
)
from ._net import WakePipe
from ._slots import SlotSockets
from .config import ServerConfig
from .restart_policy import RestartPolicy

__all__ = ["Supervisor", "resolve_worker_count"]

log = logging.getLogger("geventchat.workers")


def resolve_worker_count(requested: int) -> int:
    """``--workers`` as a number of processes: ``0`` means one per CPU this process may run on."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Supervisor:
    """Pre-fork ``count`` gevent workers serving ``config`` and keep them running; see the module docstring.

    ``worker_timeout`` is the heartbeat limit in seconds (0 turns the heartbeat off). Call :meth:`run` from the
    main thread of a process that has not started a gevent hub.
    """

    #: Crashes tolerated within :attr:`crash_window` seconds; one more and the supervisor gives up (exit 1).
    max_crashes = 5
    #: Seconds over which crashes are counted.
    crash_window = 60.0
    #: First restart delay in seconds; it doubles with each crash counted in the window.
    restart_delay = 0.1
    #: Longest restart delay in seconds.
    max_restart_delay = 5.0
    #: Seconds a worker gets to report ready; at the first start the supervisor gives up, later it kills it.
    start_timeout = 30.0
    #: Seconds, beyond the grace period and the linger time, to wait for workers to exit on shutdown.
    exit_margin = 5.0

    def __init__(
        self,
        config: ServerConfig,
        count: int,
        announce: Callable[[tuple[str, int]], None],
        *,
        worker_timeout: float = 30.0,
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        if worker_timeout < 0:
            raise ValueError(f"worker_timeout must be >= 0, not {worker_timeout}")
        self.config = config
        self.count = count
        self.worker_timeout = worker_timeout
        self._announce = announce
        self._workers = WorkerTable()
        self._slots = SlotSockets(config.host, config.backlog)  # the parent's copy of each slot's socket
        self._restarts: dict[int, float] = {}  # slot -> monotonic time due
        self._awaiting_release: dict[int, int] = {}  # old worker's pid -> slot whose replacement waits for it
        # Built from the class attributes here, so a subclass (or a test) can tune them before construction.
        self._restart_policy = RestartPolicy(
            max_crashes=self.max_crashes,
            window=self.crash_window,
            first_delay=self.restart_delay,
            max_delay=self.max_restart_delay,
        )
        self._generation = 0
        self._reloading = False
        self._announced = False
        self._stopping = False
        self._stop_deadline = 0.0
        self._failed = False
        self._unclean_exits = 0
        self._signals = 0
        self._wake = WakePipe()  # the watched signals write their numbers here
        self._selector = selectors.DefaultSelector()
        self.address: tuple[str, int] | None = None

    # -- the public entry

    def run(self) -> int:
        """Serve until a signal or repeated crashes; returns the exit status (0 after a clean shutdown).
        Raises :class:`OSError` if the address cannot be bound."""
        try:
            self.address = self._slots.open(self.count, self.config.port)
            self._selector.register(self._wake.fileno(), selectors.EVENT_READ)
            previous = {signum: signal.signal(signum, _note_signal) for signum in WATCHED}
            self._wake.catch_signals()
            try:
                return self._supervise()
            finally:
                signal.set_wakeup_fd(-1)
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        finally:
            self._close_all()

    # -- the loop

    def _supervise(self) -> int:
        log.info("starting %d workers on %s:%d", self.count, *self._shown_address())
        for index in range(self.count):
            self._spawn(index)
        start_deadline = time.monotonic() + self.start_timeout
        while self._workers or (self._restarts and not self._stopping):
            now = time.monotonic()
            if not self._announced and not self._stopping and now > start_deadline:
                log.error("workers did not all report ready within %gs; stopping", self.start_timeout)
                self._failed = True
                self._begin_stop(signal.SIGKILL)
            if self._stopping and now > self._stop_deadline:
                log.error("%d workers still running after the shutdown deadline; killing them", len(self._workers))
                self._failed = True
                self._workers.signal_all(signal.SIGKILL)
                self._stop_deadline = now + self.exit_margin
            for key, _events in self._selector.select(self._select_timeout(now)):
                if key.fd == self._wake.fileno():
                    self._on_signals()
                else:
                    self._on_control(key.data)
            self._reap()
            self._kill_silent_workers()
            self._start_due_restarts()
            self._after_events()
        if self._failed or self._unclean_exits:
            return 1
        log.info("stopped")
        return 0

    def _after_events(self) -> None:
        """Announce the first start, and finish a reload, once every current worker is ready."""
        if self._stopping or not self._all_ready():
            return
        if not self._announced:
            self._announced = True
            assert self.address is not None
            self._announce(self.address)
            log.info(
                "%d workers ready (pids %s), each serving up to %d connections",
                self.count,
                " ".join(str(pid) for pid in sorted(self._workers)),
                self.config.connection_limit,
            )
        if self._reloading and not self._awaiting_release:
            self._reloading = False
            old = [w for w in self._workers.values() if w.generation < self._generation and not w.retiring]
            for worker in old:
                worker.retire()
            log.info(
                "reload done: %d new workers ready (pids %s); %d old workers draining",
                self.count,
                " ".join(str(w.pid) for w in self._workers.current(self._generation)),
                len(old),
            )
            systemd.notify("READY=1")

    def _select_timeout(self, now: float) -> float:
        # A bounded wait: SIGCHLD wakes us through the pipe, but a periodic reap costs nothing and hides no bug; the
        # heartbeat check needs a wake-up at least every quarter of the timeout.
        timeout = 1.0
        if self.worker_timeout > 0:
            timeout = min(timeout, self.worker_timeout / 4)
        if self._restarts and not self._stopping:
            timeout = min(timeout, max(0.0, min(self._restarts.values()) - now))
        return timeout

    def _all_ready(self) -> bool:
        current = self._workers.current(self._generation)
        return not self._restarts and len(current) == self.count and all(w.ready for w in current)

    # -- events

    def _on_signals(self) -> None:
        for signum in self._wake.drain():
            if signum == signal.SIGHUP:
                self._reload()
            elif signum == signal.SIGTTIN:
                self._add_worker()
            elif signum == signal.SIGTTOU:
                self._remove_worker()
            elif signum in FORWARDED:
                self._on_stop_signal(signum)
            # SIGCHLD: the reap after every wake-up handles it

    def _on_stop_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info(
                "%s: shutting down %d workers (grace %gs); send it again to exit at once",
                signal.Signals(signum).name,
                len(self._workers),
                self.config.grace,
            )
            systemd.notify("STOPPING=1")
            self._begin_stop(signal.SIGTERM)
        else:
            log.warning("second signal: killing the workers and exiting now")
            self._failed = True
            self._workers.signal_all(signal.SIGKILL)

    def _on_control(self, worker: WorkerProcess) -> None:
        try:
            data = worker.control.recv(4096)
        except OSError:
            data = b""
        if not data:
            self._selector.unregister(worker.control)  # it exited; the reap reports how
            return
        worker.last_seen = time.monotonic()  # any message is a heartbeat
        messages = data.split()
        if READY in messages and not worker.ready:
            worker.ready = True
            log.debug("%s is listening", worker)
        if RELEASED in messages:
            self._start_replacement(worker.pid)

    def _kill_silent_workers(self) -> None:
        """SIGKILL workers that missed their heartbeat, or did not get ready in time after a restart."""
        if self._stopping:
            return  # the shutdown deadline covers them
        # A worker not ready at the first start: the start deadline in _supervise covers it.
        start_timeout = self.start_timeout if self._announced else None
        for worker, why in self._workers.silent(time.monotonic(), self.worker_timeout, start_timeout):
            log.error("%s %s; killing it", worker, why)
            worker.killed_silent = True
            worker.signal(signal.SIGKILL)  # even a stopped (SIGSTOP) process dies of it

    # -- reload and scaling

    def _reload(self) -> None:
        if self._stopping or self._reloading or not self._announced:
            log.warning("SIGHUP ignored: %s", "shutting down" if self._stopping else "already starting workers")
            return
        self._reloading = True
        self._generation += 1
        systemd.notify_reloading()
        log.info("SIGHUP: starting %d new workers; the old ones drain once all are ready", self.count)
        for worker in list(self._workers.values()):
            if worker.retiring or worker.index >= self.count:
                continue
            if self.config.metrics_port is None:
                self._spawn(worker.index)
                continue
            # Its replacement binds the same metrics port: ask it to let go first; spawn on "released".
            self._awaiting_release[worker.pid] = worker.index
            with contextlib.suppress(OSError):
                worker.control.sendall(RELEASE_METRICS + b"\n")
        for index in range(self.count):  # a slot whose worker is between crash and restart
            if index in self._restarts:
                del self._restarts[index]
                self._spawn(index)

    def _start_replacement(self, old_pid: int) -> None:
        index = self._awaiting_release.pop(old_pid, None)
        if index is not None and not self._stopping:
            self._spawn(index)

    def _add_worker(self) -> None:
        if self._stopping:
            return
        index = self.count
        self.count += 1
        log.info("SIGTTIN: adding worker %d (now %d workers)", index, self.count)
        self._slots.add(index)
        self._spawn(index)

    def _remove_worker(self) -> None:
        if self._stopping:
            return
        if self.count == 1:
            log.warning("SIGTTOU ignored: one worker is the minimum")
            return
        self.count -= 1
        index = self.count
        log.info("SIGTTOU: removing worker %d (now %d workers)", index, self.count)
        self._restarts.pop(index, None)
        for worker in list(self._workers.values()):
            if worker.index == index and not worker.retiring:
                self._awaiting_release.pop(worker.pid, None)
                worker.retire()
        self._slots.remove(index)

    # -- stopping and reaping

    def _begin_stop(self, signum: int) -> None:
        self._stopping = True
        self._restarts.clear()
        self._awaiting_release.clear()
        self._stop_deadline = time.monotonic() + self.config.grace + 2 * self.config.linger + self.exit_margin
        # Our copies would keep the port accepting into queues nobody serves once the workers stop accepting.
        self._slots.close()
        self._workers.signal_all(signum)

    def _reap(self) -> None:
        for worker, status in self._workers.reap():
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(worker.control)
            worker.control.close()
            self._on_exit(worker, status)

    def _on_exit(self, worker: WorkerProcess, status: int) -> None:
        how = describe_status(status)
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        if self._stopping:
            if not clean:
                self._unclean_exits += 1
                log.warning("%s %s during shutdown", worker, how)
            else:
                log.debug("%s exited", worker)
        elif worker.retiring:
            log.log(logging.INFO if clean else logging.WARNING, "old %s %s", worker, how)
        elif worker.pid in self._awaiting_release:
            log.warning("old %s %s during the reload", worker, how)
            self._start_replacement(worker.pid)
        elif worker.generation < self._generation:
            log.warning("old %s %s; its replacement is starting", worker, how)
        else:
            self._on_crash(worker, how)

    def _on_crash(self, worker: WorkerProcess, how: str) -> None:
        now = time.monotonic()
        verdict = self._restart_policy.on_crash(now)
        crashes, delay = verdict.crashes, verdict.delay
        if delay is None:
            log.error("%s %s; %d worker crashes within %gs: giving up", worker, how, crashes, self.crash_window)
            self._failed = True
            self._begin_stop(signal.SIGTERM)
            return
        details = (worker, how, now - worker.started, delay, crashes, self.crash_window)
        log.warning("%s %s after %.1fs; restarting it in %gs (%d crashes within %gs)", *details)
        self._restarts[worker.index] = now + delay

    def _start_due_restarts(self) -> None:
        if self._stopping:
            return
        now = time.monotonic()
        for index, due in list(self._restarts.items()):
            if due <= now:
                del self._restarts[index]
                self._spawn(index)

    # -- forking

    def _spawn(self, index: int) -> None:
        heartbeat = self.worker_timeout / 4 if self.worker_timeout > 0 else None

        def in_child(control: socket.socket, old_mask: set[int | signal.Signals]) -> NoReturn:
            become_worker(
                self.config, index, control, old_mask, release=lambda: self._release(index), heartbeat=heartbeat
            )

        worker = fork_worker(index, self._generation, in_child)
        self._workers[worker.pid] = worker
        self._selector.register(worker.control, selectors.EVENT_READ, worker)
        log.info("worker %d started (pid %d)", index, worker.pid)

    def _release(self, index: int) -> socket.socket:
        """In a forked worker: close everything of the supervisor's and return slot ``index``'s socket. The control
        sockets of other workers would keep them from seeing end of file when the parent dies, and another slot's
        socket would outlive its slot."""
        self._selector.close()
        for worker in self._workers.values():
            worker.control.close()
        self._wake.close()
        return self._slots.take(index)

    # -- helpers

    def _shown_address(self) -> tuple[str, int]:
        assert self.address is not None
        host, port = self.address
        return (f"[{host}]" if ":" in host else host), port

    def _close_all(self) -> None:
        for worker in self._workers.values():
            worker.control.close()
        self._selector.close()
        self._wake.close()
        self._slots.close()


def _note_signal(_signum: int, _frame: object) -> None:
    """The C-level handler has already written the signal number to the wake-up pipe; nothing else to do."""
