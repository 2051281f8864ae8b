"""Options through a real server process (``python -m geventchat ...``), talked to over plain blocking sockets:
the command line, the listening line and the code behind each flag, as a user meets them."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable

import pytest

from geventchat.client import ChatClient, ClosedByServer
from geventchat.config import DEFAULT_GREETING, DEFAULT_PREFIX
from geventchat.testing import ServerProcess

StartProcess = Callable[..., ServerProcess]
GREETING = (DEFAULT_GREETING + "\n").encode()
PREFIX = DEFAULT_PREFIX.encode()

#: Seconds between two probe bytes while waiting for a server to let go of a connection.
PROBE = 0.05


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=10)


def read_line(sock: socket.socket, limit: int = 4096) -> bytes:
    """One line, a byte at a time, so nothing after it is taken from the socket (bounded by ``limit``)."""
    line = b""
    while not line.endswith(b"\n") and len(line) < limit:
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
    return line


def read_until_eof(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything until the server's FIN (bounded by ``limit`` bytes and the socket's timeout)."""
    data = b""
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def wait_for_reset(sock: socket.socket, seconds: float) -> float | None:
    """Send a byte every PROBE seconds until the server's kernel answers one with a reset; returns when it came
    (``time.monotonic()``), or None if none came within ``seconds``.

    A server lingering after its ``bye:`` reads and discards what we send; once it has closed the socket, the next
    byte is answered with a reset. Nothing else tells a client that keeps its end open: the server's FIN came
    with the bye (it half-closes first)."""
    poller = select.poll()
    poller.register(sock, select.POLLERR | select.POLLHUP)
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / PROBE) + 1):  # bounded; the deadline usually ends it first
        try:
            sock.send(b".")
        except OSError:  # the reset arrived between two probes: ECONNRESET, or EPIPE after it
            return time.monotonic()
        if poller.poll(PROBE * 1000):
            return time.monotonic()
        if time.monotonic() > deadline:
            break
    return None


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------------------ rules 1, 3


def test_custom_greeting_and_prefix(server_process: StartProcess) -> None:
    greeting, prefix = "hello from 世界 — say something", "you said: "
    server = server_process("--greeting", greeting, "--prefix", prefix)
    with connect(server) as sock:
        assert read_line(sock) == (greeting + "\n").encode()
        sock.sendall(b"5\nhi there\n:q\n")
        assert read_line(sock) == b"you said: hi there\n"
        assert read_until_eof(sock) == b"you said: :q\n"  # and the server closed after the quit


# ------------------------------------------------------------------------------------------ rule 2


def test_handshake_timeout_closes_a_client_that_never_sends_its_timeout(server_process: StartProcess) -> None:
    handshake = 1.0
    server = server_process("--handshake-timeout", f"{handshake:g}")
    negotiated = ChatClient.connect(server.host, server.port, idle_timeout=30)
    started = time.monotonic()
    with connect(server) as silent:
        assert read_line(silent) == GREETING
        # The situation: greeted, then nothing from us.
        assert read_until_eof(silent) == b"bye: handshake timeout\n"
    assert handshake <= time.monotonic() - started < handshake + 5
    # A client that sent its timeout line is held to that, not to the handshake timeout.
    assert negotiated.request("still served").message == "still served"
    negotiated.quit()


# ------------------------------------------------------------------------------------------ rule 8


def test_max_per_ip_turns_away_the_next_connection_from_the_same_address(server_process: StartProcess) -> None:
    server = server_process("--max-per-ip", "1")
    first = ChatClient.connect(server.host, server.port, idle_timeout=30)
    # The situation: one connection from 127.0.0.1 held open and served.
    assert first.request("holding my slot").message == "holding my slot"
    with pytest.raises(ClosedByServer) as refused:
        ChatClient.connect(server.host, server.port, idle_timeout=30)
    assert refused.value.reason == "too many connections from your address"
    # Another address is not affected, and the first client is untouched.
    with ChatClient.connect(server.host, server.port, idle_timeout=30, source_address=("127.0.0.2", 0)) as other:
        assert other.request("from elsewhere").message == "from elsewhere"
        other.quit()
    assert first.request("unaffected").message == "unaffected"
    first.quit()


# ------------------------------------------------------------------------------------------ rule 10


def test_a_client_that_never_closes_after_a_bye_is_let_go_after_the_linger(server_process: StartProcess) -> None:
    linger = 1.5
    server = server_process("--linger", f"{linger:g}", "--max-line", "10")
    with connect(server) as sock:
        assert read_line(sock) == GREETING
        sent = time.monotonic()  # the server starts lingering after reading this, so not before `sent`
        sock.sendall(b"30\n" + b"x" * 11 + b"\n")
        # The bye, then the server's FIN (it half-closes first); we keep our end open and never close it.
        assert read_until_eof(sock) == b"bye: line too long (limit 10 bytes)\n"
        reset_at = wait_for_reset(sock, linger + 10)
    assert reset_at is not None, "the server never let go of a client that does not close"
    # The server held the connection (reading our probes) for the linger, then let go.
    assert linger <= reset_at - sent < linger + 3


# ------------------------------------------------------------------------------------------ the listening line


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_listening_line_for_an_ipv6_host_is_parseable_and_connectable() -> None:
    with ServerProcess("--host", "::1", "--port", "0", "--stats-interval", "0") as server:
        port = server.port
        # Brackets around the address, as in a URL, so the last colon is the port's.
        assert server.stdout[0] == f"geventchat listening on [::1]:{port}"
        with socket.create_connection(("::1", port), timeout=10) as sock:
            assert sock.family == socket.AF_INET6
            assert read_line(sock) == GREETING
            sock.sendall(b"5\nover IPv6\n")
            assert read_line(sock) == PREFIX + b"over IPv6\n"
