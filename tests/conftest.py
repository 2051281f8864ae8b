"""Shared fixtures: an in-process server on port 0, a server subprocess, and a bounded wait."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest

from geventchat.config import ProtocolConfig, ServerConfig
from geventchat.server import ChatServer

# In CI (CI=true or GEVENTCHAT_REQUIRE_ALL=1) every skip is a failure: see tests/ci_skips.py.
pytest_plugins = ["tests.ci_skips"]

_PROTOCOL_FIELDS = {f.name for f in dataclasses.fields(ProtocolConfig)}
LISTENING = re.compile(r"^geventchat listening on (\S+):(\d+)$")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Wait for a condition the code under test signals only through state (bounded; yields to gevent)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        gevent.sleep(0.005)


@pytest.fixture
def start_server() -> Iterator[Callable[..., ChatServer]]:
    """``start_server(max_line=10, grace=1, ...)``: a started in-process server on 127.0.0.1, port 0.

    Keyword arguments naming a ProtocolConfig field go there; the rest to ServerConfig.
    """
    servers: list[ChatServer] = []

    def start(**options: Any) -> ChatServer:
        protocol = ProtocolConfig(**{k: options.pop(k) for k in list(options) if k in _PROTOCOL_FIELDS})
        options.setdefault("stats_interval", 0)
        options.setdefault("linger", 1.0)
        server = ChatServer(ServerConfig(host="127.0.0.1", port=0, protocol=protocol, **options))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class ServerProcess:
    """``python -m geventchat`` in a subprocess; ``port`` is read from its listening line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "geventchat", "--port", "0", "--stats-interval", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()  # bounded by pytest-timeout; the server prints it first
        match = LISTENING.match(line)
        if match is None:
            self.proc.kill()
            _out, err = self.proc.communicate(timeout=5)
            raise AssertionError(f"no listening line; got {line!r}; stderr: {err}")
        self.host, self.port = match.group(1), int(match.group(2))

    def terminate_and_wait(self, timeout: float = 10.0) -> tuple[int, str]:
        """SIGTERM, then wait for exit; returns (exit code, stderr)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_for_exit(timeout)

    def wait_for_exit(self, timeout: float = 10.0) -> tuple[int, str]:
        _out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=5)  # also closes our ends of its pipes


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        process = ServerProcess(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()
