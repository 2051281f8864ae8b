"""What tests and benchmarks need to run geventchat servers and watch them, in one place (as ``trio.testing``).

- :class:`ServerProcess`: ``python -m geventchat ARGS`` (or any server that prints a listening line) in a child
  process; waits for its listening line, collects its stdout and stderr line by line so a caller can wait for a
  given log line, and stops it with SIGTERM, then SIGKILL. A context manager.
- :func:`parse_listening_line` and :func:`format_listening_line`: the server's readiness line (from
  :mod:`geventchat._listening`, next to the code that prints it).
- :func:`wait_until`: a bounded wait for a condition that is only visible as state (a counter, a /proc figure).
- /proc readers (Linux): :func:`open_fds`, :func:`rss_bytes`, :func:`pss_bytes`, :func:`cpu_seconds` of one
  process, :func:`descendants` of a process, and :func:`summed` to add a reading up over a process tree (from
  :mod:`geventchat._procfs`).

This module imports gevent only inside the functions that use it (the package's ``__init__`` does import gevent,
for ChatServer, but importing is not running: no hub starts and nothing is patched). Every wait here polls, and
between polls it yields to gevent's hub by default, so the caller's greenlets (in-process servers, load clients)
keep running while it waits; a gevent-free program (the benchmark runner) passes ``sleep=time.sleep`` to
:func:`wait_until` and ``use_gevent=False`` to :class:`ServerProcess`, and then no hub is started. Polling every
few milliseconds with the caller's choice of sleep serves both kinds of program with one code path, where waiting
on an event would need a gevent event in one and a thread condition in the other.
"""

from __future__ import annotations

import codecs
import contextlib
import gc
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from ._listening import format_listening_line, parse_listening_line
from ._procfs import cpu_seconds, descendants, open_fds, pss_bytes, rss_bytes, summed

__all__ = [
    "QUIET",
    "RedisServer",
    "RedisServerFailed",
    "RedisServerMissing",
    "ServerExited",
    "ServerProcess",
    "WaitTimedOut",
    "cpu_seconds",
    "descendants",
    "format_listening_line",
    "free_loopback_port",
    "live_greenlets",
    "open_fds",
    "parse_listening_line",
    "pss_bytes",
    "rss_bytes",
    "summed",
    "wait_until",
]

#: The arguments most tests start a server with: any free port, no periodic statistics lines.
QUIET = ("--port", "0", "--stats-interval", "0")

_T = TypeVar("_T")


class WaitTimedOut(Exception):
    """A bounded wait ran out before its condition held or its line appeared."""


class ServerExited(Exception):
    """The server process ended while we waited for it to print something (its fault, or its arguments')."""


def _gevent_sleep(seconds: float) -> None:
    import gevent

    gevent.sleep(seconds)


def wait_until(
    predicate: Callable[[], bool],
    timeout: float = 5.0,
    what: str = "condition",
    *,
    interval: float = 0.005,
    sleep: Callable[[float], None] | None = None,
) -> None:
    """Return once ``predicate()`` is true; raise :class:`WaitTimedOut` after ``timeout`` seconds.

    For state the code under test changes without an event to wait on. ``sleep`` runs between two polls
    (``interval`` apart): by default ``gevent.sleep``, which lets other greenlets run; gevent-free programs pass
    ``time.sleep``.
    """
    pause = _gevent_sleep if sleep is None else sleep
    deadline = time.monotonic() + timeout
    while not predicate():  # bounded by the deadline
        if time.monotonic() > deadline:
            raise WaitTimedOut(f"timed out after {timeout:g}s waiting for {what}")
        pause(interval)


# ------------------------------------------------------------------------------------------ server processes


_METRICS_LINE = re.compile(r"metrics on http://(?:\[(?P<v6>[^\]]+)\]|(?P<host>\S+?)):(?P<port>\d+)/metrics$")
#: Reads of up to 64 KiB one catch-up makes at most, so a child writing flat out cannot hold a caller there.
_MAX_READS = 64


class _Output:
    """One of the child's output pipes, read into ``lines``.

    A thread of ours reads as output arrives, so the child never blocks on a full pipe whatever the caller does
    (a test blocked on stdlib sockets, a gevent-free program). A caller catches up under the same lock before it
    looks (:meth:`catch_up`), so it sees every line the child wrote before it looked: a log line written just
    before the client got its reply is there when the test checks for it."""

    def __init__(self, fd: int, label: str) -> None:
        os.set_blocking(fd, False)
        self.lines: list[str] = []
        self.ended = False
        self._fd = fd
        self._lock = threading.Lock()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        threading.Thread(target=self._pump, name=label, daemon=True).start()

    def _pump(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self.ended:  # until every writer has closed the pipe (the child and anything it forked)
            poller.poll()  # without the lock: a caller may catch up meanwhile
            self.catch_up()
        with self._lock:
            os.close(self._fd)  # here only, so no one polls or reads a closed (or reused) descriptor

    def catch_up(self) -> list[str]:
        """Take in what the child has written so far; returns ``lines``."""
        with self._lock:
            for _ in range(_MAX_READS):
                if self.ended:
                    break
                try:
                    data = os.read(self._fd, 65536)
                except BlockingIOError:
                    break
                text = self._partial + self._decoder.decode(data, final=not data)
                *complete, self._partial = text.split("\n")
                self.lines.extend(line.removesuffix("\r") for line in complete)
                if not data:  # end of file; a last line without its newline counts too
                    if self._partial:
                        self.lines.append(self._partial.removesuffix("\r"))
                    self.ended = True
        return self.lines

    def done(self) -> bool:
        """Everything the child (and its children) will ever write here has been read."""
        self.catch_up()
        return self.ended


class ServerProcess:
    """A server in a child process, its output collected line by line; a context manager that stops it.

    ``ServerProcess(*args)`` runs ``python -m geventchat ARGS`` (``args`` as given: start them with :data:`QUIET`
    for port 0 and no statistics lines), ``code=`` runs ``python -c CODE ARGS`` (a test's patched entry point) and
    ``command=`` runs any program that prints a listening line (``name=`` is its program name, None for any).
    Unless ``wait=False`` it returns once the listening line is printed, and ``host``, ``port`` and ``address``
    say where; it raises :class:`ServerExited` or :class:`WaitTimedOut` (after ``start_timeout``) otherwise.

    ``nofile`` sets the child's open-file limit and ``cpus`` pins it, both before it runs; ``new_session`` puts it
    in a session of its own so that :meth:`kill` takes its whole process tree. ``stdout`` and ``stderr`` are the
    lines it has written up to the moment they are read (without newlines; a thread of ours keeps each pipe
    drained, so the server never blocks on a full one); :meth:`wait_for` waits for one.

    With ``use_gevent`` (the default) the process is a ``gevent.subprocess.Popen`` and every wait yields to
    gevent: a stdlib child would be reaped by gevent's SIGCHLD handler once any gevent subprocess has run in this
    process, and its exit status lost. ``use_gevent=False`` uses the stdlib and ``time.sleep``, for gevent-free
    programs.
    """

    def __init__(
        self,
        *args: str,
        code: str | None = None,
        command: Sequence[str] | None = None,
        name: str | None = "geventchat",
        env: dict[str, str] | None = None,
        wait: bool = True,
        start_timeout: float = 20.0,
        nofile: int | None = None,
        cpus: set[int] | None = None,
        new_session: bool = False,
        use_gevent: bool = True,
    ) -> None:
        if command is None:
            command = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "geventchat"]
        self.command = [*command, *args]
        self.host, self.port = "", 0
        self._name = name
        self._new_session = new_session
        self._use_gevent = use_gevent
        self._sleep: Callable[[float], None] = _gevent_sleep if use_gevent else time.sleep
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            self.proc = self._popen(out_write, err_write, env, nofile, cpus)
        except BaseException:  # the command could not be started: no pipes left behind; re-raised
            os.close(out_read)
            os.close(err_read)
            raise
        finally:
            os.close(out_write)  # the child has its copies: our reads end when it (and its children) close them
            os.close(err_write)
        self.pid = self.proc.pid
        self._out = _Output(out_read, f"stdout of pid {self.pid}")
        self._err = _Output(err_read, f"stderr of pid {self.pid}")
        if wait:
            try:
                self.wait_listening(start_timeout)
            except BaseException:  # including a KeyboardInterrupt: never leave the child running; re-raised
                self.close()
                raise

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def stdout(self) -> list[str]:
        """The lines (without newlines) the server has written on stdout, up to now."""
        return self._out.catch_up()

    @property
    def stderr(self) -> list[str]:
        """The lines (without newlines) the server has written on stderr, up to now."""
        return self._err.catch_up()

    def _popen(
        self, stdout: int, stderr: int, env: dict[str, str] | None, nofile: int | None, cpus: set[int] | None
    ) -> subprocess.Popen[bytes]:
        def in_child() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            if cpus is not None:
                os.sched_setaffinity(0, cpus)

        if self._use_gevent:
            import gevent.subprocess

            popen = gevent.subprocess.Popen
        else:
            popen = subprocess.Popen
        process: subprocess.Popen[bytes] = popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, **env} if env is not None else None,
            start_new_session=self._new_session,
            # Before exec, so the limits hold from the child's first instruction (a server sizes its connection
            # cap from its open-file limit). Only two syscalls run there: safe even with reader threads about.
            preexec_fn=in_child if nofile is not None or cpus is not None else None,
        )
        return process

    def _ended(self) -> bool:
        """The process exited and everything it wrote has been read."""
        return self.proc.poll() is not None and self._out.done() and self._err.done()

    def _wait_line(self, parse: Callable[[str], _T | None], stream: str, timeout: float, start: int, what: str) -> _T:
        output = self._out if stream == "stdout" else self._err
        found: list[_T] = []
        index = start

        def seen() -> bool:
            nonlocal index
            ended = self._ended()  # before the scan: once ended, the scan sees every line
            lines = output.catch_up()
            while index < len(lines) and not found:
                result = parse(lines[index])
                if result is not None:
                    found.append(result)
                index += 1
            return bool(found) or ended

        try:
            wait_until(seen, timeout, what, sleep=self._sleep)
        except WaitTimedOut:
            raise WaitTimedOut(f"no {what} within {timeout:g}s; {self._tail()}") from None
        if not found:
            raise ServerExited(f"the server exited (status {self.proc.returncode}) before {what}; {self._tail()}")
        return found[0]

    def _tail(self) -> str:
        return "stdout so far:\n" + "\n".join(self.stdout[-10:]) + "\nstderr so far:\n" + "\n".join(self.stderr[-30:])

    def wait_for(self, pattern: str, *, stream: str = "stderr", timeout: float = 15.0, start: int = 0) -> re.Match[str]:
        """The first ``stream`` line from index ``start`` on that matches ``pattern`` (``re.search``), waiting for
        it up to ``timeout`` seconds; :class:`WaitTimedOut` if none came, :class:`ServerExited` if the process
        ended first."""
        regex = re.compile(pattern)
        return self._wait_line(regex.search, stream, timeout, start, f"{stream} line matching {pattern!r}")

    def wait_listening(self, timeout: float = 20.0) -> tuple[str, int]:
        """Wait for the listening line; sets and returns ``address``."""
        self.host, self.port = self._wait_line(
            lambda line: parse_listening_line(line, self._name), "stdout", timeout, 0, "a listening line"
        )
        return self.address

    def metrics_address(self, timeout: float = 15.0) -> tuple[str, int] | None:
        """Where a single server started with ``--metrics-port`` serves its metrics (its ``metrics on http://...``
        stdout line), or None if no such line came within ``timeout`` seconds."""
        try:
            match = self._wait_line(_METRICS_LINE.search, "stdout", timeout, 0, "a metrics line")
        except (WaitTimedOut, ServerExited):
            return None
        return match.group("v6") or match.group("host"), int(match.group("port"))

    def stderr_text(self) -> str:
        """Everything read from the server's stderr so far, one line per line."""
        return "".join(line + "\n" for line in self.stderr)

    def fds(self) -> int:
        return open_fds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        """Signal the server process itself (not its children: a supervisor forwards what it should)."""
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait up to ``timeout`` seconds for the process to end, then for its output to be read; returns its exit
        status. :class:`WaitTimedOut` if it does not end."""
        wait_until(lambda: self.proc.poll() is not None, timeout, f"pid {self.pid} to exit", sleep=self._sleep)
        with contextlib.suppress(WaitTimedOut):  # children that outlive it may hold the pipes: not past the bound
            wait_until(lambda: self._out.done() and self._err.done(), timeout, "its output", sleep=self._sleep)
        return int(self.proc.returncode)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds; returns the exit status."""
        if self.proc.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                wait_until(lambda: self.proc.poll() is not None, timeout, f"pid {self.pid} to exit", sleep=self._sleep)
            except WaitTimedOut:
                self.kill()
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL now: the whole session with ``new_session``, else the process alone."""
        if self._new_session:
            with contextlib.suppress(ProcessLookupError):  # the session is already empty
                os.killpg(self.pid, signal.SIGKILL)
        elif self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)

    def close(self) -> None:
        """Stop the server if it still runs (and, with ``new_session``, whatever is left of its tree)."""
        self.stop()
        if self._new_session:
            self.kill()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def live_greenlets() -> int:
    """Greenlets alive in this process (after a collection, so garbage is not counted)."""
    import greenlet

    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet) and not obj.dead)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago (for a process that takes a port number, not a
    socket; another process may still take it first, as with any probe)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServerMissing(Exception):
    """``redis-server`` is not installed (the machine's setup): install the Debian package ``redis-server``."""


class RedisServerFailed(Exception):
    """``redis-server`` exited or did not answer PING in time after we started it."""


class RedisServer:
    """One real ``redis-server`` process for tests and benchmarks: loopback, a free port, persistence off, its files
    and log in ``directory``. :meth:`start` and :meth:`stop` may be called again (same port, same directory: a
    restart comes back empty, as persistence is off)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerMissing("redis-server not found: install the Debian package redis-server")
        self.binary = binary
        self.directory = directory
        self.port = free_loopback_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait (bounded) until it answers PING; :class:`RedisServerFailed` if it does not."""
        self.proc = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                *("--dir", str(self.directory), "--loglevel", "warning", "--logfile", str(self.log)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None:
                log = self.log.read_text() if self.log.exists() else ""
                raise RedisServerFailed(f"redis-server exited with {self.proc.returncode}; its log: {log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RedisServerFailed(f"redis-server on port {self.port} did not answer PING within {timeout}s")
            time.sleep(0.02)  # a subprocess starting: nothing to wait on but its port

    def ping(self) -> bool:
        """True if it answers PING now (a blocking stdlib socket: a probe, not the code under test)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill it (SIGKILL: as a crash would) and wait for it to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
