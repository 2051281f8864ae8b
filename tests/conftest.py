"""Shared fixtures: an in-process server on port 0 and a server subprocess (geventchat.testing has the helpers)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from geventchat.config import ProtocolConfig, ServerConfig
from geventchat.server import ChatServer
from geventchat.testing import QUIET, ServerProcess

# In CI (CI=true or GEVENTCHAT_REQUIRE_ALL=1) every skip is a failure: see tests/ci_skips.py.
pytest_plugins = ["tests.ci_skips"]

_PROTOCOL_FIELDS = {f.name for f in dataclasses.fields(ProtocolConfig)}


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


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    """``server_process(*args, **options)``: a :class:`geventchat.testing.ServerProcess` on port 0 with no
    statistics lines (``args`` may override both), stopped when the test ends."""
    started: list[ServerProcess] = []

    def start(*args: str, **options: Any) -> ServerProcess:
        process = ServerProcess(*QUIET, *args, **options)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()
