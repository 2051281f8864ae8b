"""One worker process of the supervisor (see :mod:`geventchat.workers`): forking it, what the child does before it
serves, the messages on its control socket, and how its exit is told. Stdlib only: the child imports gevent (in
:mod:`geventchat._worker`) only after the fork, so the supervising parent never starts a hub."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from .config import ServerConfig

__all__ = [
    "ALIVE",
    "FORWARDED",
    "READY",
    "RELEASED",
    "RELEASE_METRICS",
    "WATCHED",
    "WorkerProcess",
    "WorkerTable",
    "become_worker",
    "describe_status",
    "fork_worker",
]

log = logging.getLogger("geventchat.workers")

# The control socket's messages, one per line. Worker -> supervisor: any message is also a heartbeat.
#: The worker serves.
READY = b"ready"
#: The worker is alive (every quarter of ``--worker-timeout``).
ALIVE = b"alive"
#: The worker has closed its metrics endpoint, as asked.
RELEASED = b"released"
#: Supervisor -> worker: close your metrics endpoint now (a replacement needs its port).
RELEASE_METRICS = b"release-metrics"

#: Signals the supervisor forwards to its workers (a worker shuts down gracefully on them).
FORWARDED = (signal.SIGTERM, signal.SIGINT)
#: Signals the supervisor watches through its wake-up pipe.
WATCHED = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
#: Signals only the supervisor acts on: a worker ignores them (a terminal hang-up reaches the whole group).
_SUPERVISOR_ONLY = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)

_SignalMask = set[int | signal.Signals]


@dataclass
class WorkerProcess:
    """What the supervisor knows of one forked worker."""

    index: int  # the slot
    pid: int
    control: socket.socket
    started: float
    generation: int
    last_seen: float = 0.0  # monotonic time of the last message on the control socket
    ready: bool = False
    retiring: bool = False  # told to drain and leave: its exit is not a crash
    killed_silent: bool = False  # killed for a missed heartbeat or start: do not kill it twice

    def __str__(self) -> str:
        """How the log names it: ``worker 1 (pid 123)``."""
        return f"worker {self.index} (pid {self.pid})"

    def signal(self, signum: int) -> None:
        """Send ``signum``, unless the process is gone already (its exit is reaped)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def retire(self) -> None:
        """Tell it to drain and leave (SIGTERM): its exit is then not a crash."""
        self.retiring = True
        self.signal(signal.SIGTERM)


class WorkerTable(dict[int, WorkerProcess]):
    """The supervisor's live workers, by pid, and what it asks of them as a group."""

    def current(self, generation: int) -> list[WorkerProcess]:
        """The workers of ``generation`` that are not leaving, in slot order."""
        current = [w for w in self.values() if w.generation == generation and not w.retiring]
        return sorted(current, key=lambda w: w.index)

    def signal_all(self, signum: int) -> None:
        for worker in self.values():
            worker.signal(signum)

    def reap(self) -> list[tuple[WorkerProcess, int]]:
        """Collect the workers that exited (without waiting), each with its wait status, and drop them."""
        exited: list[tuple[WorkerProcess, int]] = []
        for _ in range(len(self)):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self.pop(pid, None)
            if worker is not None:
                exited.append((worker, status))
        return exited

    def silent(self, now: float, worker_timeout: float, start_timeout: float | None) -> list[tuple[WorkerProcess, str]]:
        """Workers not yet killed that missed their heartbeat (``worker_timeout`` seconds, 0: never) or did not
        get ready within ``start_timeout`` seconds (None: not checked), each with why."""
        found: list[tuple[WorkerProcess, str]] = []
        for worker in self.values():
            if worker.killed_silent:
                continue
            if worker.ready and worker_timeout > 0 and now - worker.last_seen > worker_timeout:
                why = f"sent no heartbeat for {now - worker.last_seen:.1f}s (--worker-timeout {worker_timeout:g})"
            elif not worker.ready and start_timeout is not None and now - worker.started > start_timeout:
                why = f"did not get ready within {start_timeout:g}s"
            else:
                continue
            found.append((worker, why))
        return found


def fork_worker(
    index: int, generation: int, in_child: Callable[[socket.socket, _SignalMask], NoReturn]
) -> WorkerProcess:
    """Fork the worker for slot ``index``; the child runs ``in_child(control, signal_mask)`` (which must not
    return: :func:`become_worker`), with the :data:`WATCHED` signals still blocked until it unblocks them with the
    mask given. Returns the parent's record, its end of the control socket included. Raises :class:`OSError` if
    the fork fails."""
    parent_end, child_end = socket.socketpair()
    # Flush before fork so buffered output is not written twice; block the signals we care about so the child
    # cannot receive one before it has replaced our handlers (it unblocks them itself).
    sys.stdout.flush()
    sys.stderr.flush()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        parent_end.close()
        child_end.close()
        raise
    if pid == 0:
        parent_end.close()
        in_child(child_end, old_mask)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    child_end.close()
    now = time.monotonic()
    return WorkerProcess(index, pid, parent_end, now, generation, last_seen=now)


def become_worker(
    config: ServerConfig,
    index: int,
    control: socket.socket,
    old_mask: _SignalMask,
    *,
    release: Callable[[], socket.socket],
    heartbeat: float | None,
) -> NoReturn:
    """In the forked child: take over the signals, ``release()`` everything of the supervisor's but the slot's
    listening socket (which it returns), serve (:func:`geventchat._worker.serve_worker`) and exit with its status;
    1 if anything raised (logged)."""
    code = 1
    try:
        early = _take_signals(old_mask)
        listener = release()
        from ._worker import serve_worker

        code = serve_worker(config, listener, index, control, early, heartbeat=heartbeat)
    except BaseException:  # the child must reach os._exit whatever happened, never the parent's code
        with contextlib.suppress(BaseException):
            log.exception("worker %d failed", index)
    finally:
        with contextlib.suppress(BaseException):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _take_signals(old_mask: _SignalMask) -> list[int]:
    """The child's signal handling until its hub takes over: stop signals that arrive now are noted (returned
    list, filled later), the supervisor's own are ignored, and the mask blocked for the fork is lifted."""
    signal.set_wakeup_fd(-1)
    early: list[int] = []
    for signum in FORWARDED:
        signal.signal(signum, lambda signum, _frame: early.append(signum))
    for signum in _SUPERVISOR_ONLY:
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return early


def describe_status(status: int) -> str:
    """A wait status as the log says it: ``was killed by SIGKILL``, ``exited with status 1``."""
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
