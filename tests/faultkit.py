"""Helpers for the fault, abuse and hardening tests: servers in this process or in a child, fd/memory/greenlet
counts, raw loopback sockets, and bounded waits. Plain module (not a conftest) so it merges cleanly."""

from __future__ import annotations

import contextlib
import gc
import os
import re
import resource
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import gevent.subprocess
import greenlet
from gevent.socket import socket as GeventSocket

from geventchat import ChatClient, ChatServer, ServerConfig

LISTENING = re.compile(r"listening on \[?([^\]\s]+?)\]?:(\d+)$")
METRICS = re.compile(r"metrics on http://([^:/]+):(\d+)/metrics$")


class WaitTimedOut(Exception):
    """A bounded wait in a test ran out."""


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_greenlets() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet) and not obj.dead)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> None:
    """Poll ``predicate`` (for state with no event to wait on, such as /proc counts) until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise WaitTimedOut(f"condition not met within {timeout}s")
        gevent.sleep(interval)


def raw_connect(address: tuple[str, int], source: str | None = None, timeout: float = 5.0) -> GeventSocket:
    sock = GeventSocket(socket.AF_INET, socket.SOCK_STREAM)
    if source is not None:
        sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def reset_close(sock: GeventSocket) -> None:
    """Close with SO_LINGER 0: the kernel sends a reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_until_closed(sock: GeventSocket, timeout: float = 5.0, limit: int = 1 << 24) -> bytes:
    """Everything the peer sends until it closes (a reset after data counts as closed)."""
    chunks: list[bytes] = []
    size = 0
    with gevent.Timeout(timeout, WaitTimedOut):
        while size < limit:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
            size += len(data)
    return b"".join(chunks)


def read_line(sock: GeventSocket, timeout: float = 5.0) -> bytes:
    """One line, read a byte at a time (tests only: nothing after the newline is consumed)."""
    line = bytearray()
    with gevent.Timeout(timeout, WaitTimedOut):
        while not line.endswith(b"\n"):
            byte = sock.recv(1)
            if not byte:
                break
            line += byte
    return bytes(line)


def fresh_client_works(address: tuple[str, int], **connect: object) -> bool:
    """A new client is greeted, echoed and quits cleanly."""
    with ChatClient.connect(*address, idle_timeout=5, connect_timeout=5, **connect) as client:  # type: ignore[arg-type]
        ok = client.request("still here?").message == "still here?"
        client.quit()
    return ok


@contextlib.contextmanager
def serving(config: ServerConfig) -> Iterator[ChatServer]:
    """A started in-process server (port 0, stats lines off), stopped at exit."""
    server = ChatServer(config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def quiet(**overrides: object) -> ServerConfig:
    settings: dict[str, object] = {"port": 0, "stats_interval": 0, "linger": 0.5}
    settings.update(overrides)
    return ServerConfig(**settings)  # type: ignore[arg-type]


class ServerProcess:
    """``python -m geventchat`` in a child process (own hub, own fd table), stderr captured to a file."""

    def __init__(self, tmp_path: Path, *args: str, nofile: int | None = None) -> None:
        self.stderr_path = tmp_path / f"server-{time.monotonic_ns()}.log"
        self._stderr = self.stderr_path.open("wb")

        def limit_files() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        command = [sys.executable, "-m", "geventchat", "--port", "0", "--stats-interval", "0", *args]
        self.proc = gevent.subprocess.Popen(
            command, stdout=gevent.subprocess.PIPE, stderr=self._stderr, preexec_fn=limit_files
        )
        self.pid = self.proc.pid
        self.address = self._expect(LISTENING)
        self.metrics_address = self._expect(METRICS) if "--metrics-port" in args else None

    def _expect(self, pattern: re.Pattern[str]) -> tuple[str, int]:
        with gevent.Timeout(20, WaitTimedOut):
            line = self.proc.stdout.readline().decode().strip()
        match = pattern.search(line)
        if match is None:
            self.kill()
            raise AssertionError(f"unexpected server output {line!r}; stderr: {self.stderr()}")
        return match.group(1), int(match.group(2))

    def fds(self) -> int:
        return open_fds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return int(self.proc.wait(timeout=timeout))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@contextlib.contextmanager
def server_process(tmp_path: Path, *args: str, nofile: int | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path, *args, nofile=nofile)
    try:
        yield server
    finally:
        server.close()


def scrape(address: tuple[str, int], timeout: float = 5.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and parse it: ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    sock = raw_connect(address, timeout=timeout)
    try:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        response = read_until_closed(sock, timeout=timeout)
    finally:
        sock.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200"), head[:100]
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
