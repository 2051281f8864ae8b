"""Helpers for the fault, abuse and hardening tests: servers in this process, raw loopback sockets, reads with a
deadline and metrics scrapes. Server processes, /proc counts and wait_until are in geventchat.testing. Plain module
(not a conftest) so it merges cleanly."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator

import gevent
from gevent.socket import socket as GeventSocket

from geventchat import ChatClient, ChatServer, ServerConfig
from geventchat.testing import WaitTimedOut


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
