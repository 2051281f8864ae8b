"""A real ``redis-server`` for tests: on a free loopback port, persistence off, in a temporary directory; stopped at
teardown. Never skipped: CI installs the Debian package (``.ci/run``), and a missing binary is a failure that says so.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class RedisServerMissing(Exception):
    """``redis-server`` is not installed: the Redis tests cannot run (CI must have it)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process; :meth:`start` and :meth:`stop` may be called again (same port, same directory:
    a restart comes back empty, as persistence is off)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerMissing("redis-server not found: install the Debian package redis-server (.ci/run does)")
        self.binary = binary
        self.directory = directory
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait (bounded) until it answers PING."""
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
                raise AssertionError(f"redis-server exited with {self.proc.returncode}; its log: {log}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"redis-server on port {self.port} did not answer PING within {timeout}s")
            time.sleep(0.02)  # a subprocess starting: nothing to wait on but its port

    def ping(self) -> bool:
        """True if it answers PING now (a blocking stdlib socket: the test's own probe, not the code under test)."""
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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
