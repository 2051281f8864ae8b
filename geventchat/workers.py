"""Pre-forked workers: one supervising parent, N worker processes each with its own gevent hub and ChatServer.

The parent runs no gevent at all: it reserves the port, forks the workers, and then only waits (``selectors`` on
the signal wake-up pipe and one control socket per worker) and reaps. Each worker binds the same port with
``SO_REUSEPORT`` (set before ``bind``), so the kernel spreads new connections over the workers' own accept queues;
``--max-connections`` and the open-file limit apply to each worker separately.

- Port 0: the parent binds a ``SO_REUSEPORT`` socket first to learn a concrete port and keeps it bound (never
  listening, so it gets no connections) for its whole life: a restarting worker can always bind the port again.
  It keeps off programs that bind plainly, but it is not a lock: Linux lets a ``SO_REUSEADDR`` socket bind a port
  nobody listens on, and a same-user ``SO_REUSEPORT`` socket join the workers.
- Readiness: a worker writes ``ready`` on its control socket once it listens; the parent prints the one line
  ``geventchat listening on HOST:PORT`` after every worker has done so.
- Signals: SIGTERM/SIGINT are forwarded (as SIGTERM) to every worker, which shuts down gracefully (every client
  gets ``bye: server shutting down``); the parent exits 0 once all workers exited 0. A second signal kills the
  workers and exits 1.
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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._net import WakePipe, bind_tcp
from .config import ServerConfig
from .restart_policy import RestartPolicy

__all__ = ["Supervisor", "resolve_worker_count"]

log = logging.getLogger("geventchat.workers")

_READY = b"ready\n"
_FORWARDED = (signal.SIGTERM, signal.SIGINT)
_WATCHED = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)


def resolve_worker_count(requested: int) -> int:
    """``--workers`` as a number of processes: ``0`` means one per CPU this process may run on."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class _Worker:
    index: int
    pid: int
    control: socket.socket
    started: float
    ready: bool = False


class Supervisor:
    """Pre-fork ``count`` gevent workers serving ``config`` and keep them running; see the module docstring.

    Call :meth:`run` from the main thread of a process that has not started a gevent hub.
    """

    #: Crashes tolerated within :attr:`crash_window` seconds; one more and the supervisor gives up (exit 1).
    max_crashes = 5
    #: Seconds over which crashes are counted.
    crash_window = 60.0
    #: First restart delay in seconds; it doubles with each crash counted in the window.
    restart_delay = 0.1
    #: Longest restart delay in seconds.
    max_restart_delay = 5.0
    #: Seconds every worker gets to report ready at start before the supervisor gives up.
    start_timeout = 30.0
    #: Seconds, beyond the grace period and the linger time, to wait for workers to exit on shutdown.
    exit_margin = 5.0

    def __init__(self, config: ServerConfig, count: int, announce: Callable[[tuple[str, int]], None]) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        self.config = config
        self.count = count
        self._announce = announce
        self._workers: dict[int, _Worker] = {}  # by pid
        self._restarts: dict[int, float] = {}  # worker index -> monotonic time due
        # Built from the class attributes here, so a subclass (or a test) can tune them before construction.
        self._restart_policy = RestartPolicy(
            max_crashes=self.max_crashes,
            window=self.crash_window,
            first_delay=self.restart_delay,
            max_delay=self.max_restart_delay,
        )
        self._announced = False
        self._stopping = False
        self._stop_deadline = 0.0
        self._failed = False
        self._unclean_exits = 0
        self._signals = 0
        self._reservation: socket.socket | None = None
        self._wake = WakePipe()  # SIGTERM, SIGINT and SIGCHLD write their numbers here
        self._selector = selectors.DefaultSelector()
        self.address: tuple[str, int] | None = None

    # -- the public entry

    def run(self) -> int:
        """Serve until a signal or repeated crashes; returns the exit status (0 after a clean shutdown).
        Raises :class:`OSError` if the address cannot be bound."""
        try:
            # Bound, never listening: a concrete port for port 0, held for restarting workers (module docstring).
            self._reservation = bind_tcp(self.config.host, self.config.port, reuse_port=True, listen=False)
            self.address = self._reservation.getsockname()[:2]
            self._selector.register(self._wake.fileno(), selectors.EVENT_READ)
            previous = {signum: signal.signal(signum, _note_signal) for signum in _WATCHED}
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
                self._signal_workers(signal.SIGKILL)
                self._stop_deadline = now + self.exit_margin
            for key, _events in self._selector.select(self._select_timeout(now)):
                if key.fd == self._wake.fileno():
                    self._on_signals()
                else:
                    self._on_control(key.data)
            self._reap()
            self._start_due_restarts()
            if not self._announced and not self._stopping and self._all_ready():
                self._announced = True
                assert self.address is not None
                self._announce(self.address)
                log.info(
                    "%d workers ready (pids %s), each serving up to %d connections",
                    self.count,
                    " ".join(str(pid) for pid in sorted(self._workers)),
                    self.config.connection_limit,
                )
        if self._failed or self._unclean_exits:
            return 1
        log.info("stopped")
        return 0

    def _select_timeout(self, now: float) -> float:
        # A bounded wait: SIGCHLD wakes us through the pipe, but a periodic reap costs nothing and hides no bug.
        timeout = 1.0
        if self._restarts and not self._stopping:
            timeout = min(timeout, max(0.0, min(self._restarts.values()) - now))
        return timeout

    def _all_ready(self) -> bool:
        return not self._restarts and len(self._workers) == self.count and all(w.ready for w in self._workers.values())

    # -- events

    def _on_signals(self) -> None:
        for signum in self._wake.drain():
            if signum not in _FORWARDED:
                continue  # SIGCHLD: the reap after every wake-up handles it
            self._signals += 1
            if self._signals == 1:
                log.info(
                    "%s: shutting down %d workers (grace %gs); send it again to exit at once",
                    signal.Signals(signum).name,
                    len(self._workers),
                    self.config.grace,
                )
                self._begin_stop(signal.SIGTERM)
            else:
                log.warning("second signal: killing the workers and exiting now")
                self._failed = True
                self._signal_workers(signal.SIGKILL)

    def _on_control(self, worker: _Worker) -> None:
        try:
            data = worker.control.recv(64)
        except OSError:
            data = b""
        if data.startswith(_READY.strip()):
            worker.ready = True
            log.debug("worker %d (pid %d) is listening", worker.index, worker.pid)
        elif not data:
            self._selector.unregister(worker.control)  # it exited; the reap reports how

    def _begin_stop(self, signum: int) -> None:
        self._stopping = True
        self._restarts.clear()
        self._stop_deadline = time.monotonic() + self.config.grace + 2 * self.config.linger + self.exit_margin
        self._signal_workers(signum)

    def _signal_workers(self, signum: int) -> None:
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self) -> None:
        for _ in range(len(self._workers)):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(worker.control)
            worker.control.close()
            how = _describe_status(status)
            if self._stopping:
                if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                    self._unclean_exits += 1
                    log.warning("worker %d (pid %d) %s during shutdown", worker.index, pid, how)
                else:
                    log.debug("worker %d (pid %d) exited", worker.index, pid)
                continue
            self._on_crash(worker, how)

    def _on_crash(self, worker: _Worker, how: str) -> None:
        now = time.monotonic()
        verdict = self._restart_policy.on_crash(now)
        crashes, delay = verdict.crashes, verdict.delay
        if delay is None:
            log.error(
                "worker %d (pid %d) %s; %d worker crashes within %gs: giving up",
                worker.index,
                worker.pid,
                how,
                crashes,
                self.crash_window,
            )
            self._failed = True
            self._begin_stop(signal.SIGTERM)
            return
        log.warning(
            "worker %d (pid %d) %s after %.1fs; restarting it in %gs (%d crashes within %gs)",
            worker.index,
            worker.pid,
            how,
            now - worker.started,
            delay,
            crashes,
            self.crash_window,
        )
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
        parent_end, child_end = socket.socketpair()
        # Flush before fork so buffered output is not written twice; block the signals we care about so the child
        # cannot receive one before it has replaced our handlers (it unblocks them itself).
        sys.stdout.flush()
        sys.stderr.flush()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            parent_end.close()
            child_end.close()
            raise
        if pid == 0:  # the child: never returns
            parent_end.close()
            self._become_worker(index, child_end, old_mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        child_end.close()
        worker = _Worker(index, pid, parent_end, time.monotonic())
        self._workers[pid] = worker
        self._selector.register(parent_end, selectors.EVENT_READ, worker)
        log.info("worker %d started (pid %d)", index, pid)

    def _become_worker(self, index: int, control: socket.socket, old_mask: set[int | signal.Signals]) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            early: list[int] = []
            for signum in _FORWARDED:
                signal.signal(signum, lambda signum, _frame: early.append(signum))
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            # Nothing of the supervisor's may stay open here: the control sockets of other workers would keep
            # them from seeing end of file when the parent dies, and the reservation is the parent's.
            self._selector.close()
            for worker in self._workers.values():
                worker.control.close()
            self._wake.close()
            if self._reservation is not None:
                self._reservation.close()
            assert self.address is not None
            from ._worker import serve_worker

            code = serve_worker(self.config, self.address[1], index, control, early)
        except BaseException:
            with contextlib.suppress(BaseException):
                log.exception("worker %d failed", index)
        finally:
            with contextlib.suppress(BaseException):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

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
        if self._reservation is not None:
            self._reservation.close()


def _note_signal(_signum: int, _frame: object) -> None:
    """The C-level handler has already written the signal number to the wake-up pipe; nothing else to do."""


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"was killed by {name}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"ended (wait status {status})"
