"""geventchat._net: the stdlib socket pieces every shell shares (bind_tcp, WakePipe, linger_close).

Real loopback sockets, no server: each test builds the situation (a listener, unread input, a peer that does not
close) and checks what the piece promises.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import struct
import termios
import time
from collections.abc import Iterator

import gevent.socket
import pytest

from geventchat._net import ACCEPT_PEER_ERRORS, ACCEPT_RESOURCE_ERRORS, LINGER_READ, WakePipe, bind_tcp, linger_close

HOST = "127.0.0.1"


def unread_bytes(sock: socket.socket | gevent.socket.socket) -> int:
    """Bytes the kernel holds for ``sock`` that nobody has read yet (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server side, client side) of one loopback TCP connection, both blocking."""
    listener = bind_tcp(HOST, 0, backlog=1)
    client = socket.create_connection(listener.getsockname(), timeout=5)
    served, _ = listener.accept()
    listener.close()
    yield served, client
    served.close()
    client.close()


# ------------------------------------------------------------------------------------------------ bind_tcp


def test_bind_tcp_listens_on_a_free_port_with_reuseaddr() -> None:
    with bind_tcp(HOST, 0, backlog=8) as listener:
        host, port = listener.getsockname()
        assert (host, listener.family) == (HOST, socket.AF_INET) and port > 0
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        assert listener.getblocking()
        with socket.create_connection((HOST, port), timeout=5) as client:
            served, address = listener.accept()
            with served:
                assert address == client.getsockname()


def test_bind_tcp_without_listen_reserves_the_port_and_refuses_connections() -> None:
    with bind_tcp(HOST, 0, reuse_port=True, listen=False) as reservation:
        port = reservation.getsockname()[1]
        assert port > 0
        assert reservation.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, port), timeout=5).close()
        # The reservation holds the port against a socket bound without SO_REUSEADDR ...
        with socket.socket() as other, pytest.raises(OSError) as taken:
            other.bind((HOST, port))
        assert taken.value.errno == errno.EADDRINUSE
        # ... but not against the workers that share it, each with SO_REUSEPORT set before bind.
        with bind_tcp(HOST, port, backlog=8, reuse_port=True) as worker:
            assert worker.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            with socket.create_connection((HOST, port), timeout=5):
                worker.accept()[0].close()


def test_bind_tcp_closes_its_socket_when_the_address_is_taken() -> None:
    with bind_tcp(HOST, 0) as taken:
        before = open_fds()
        with pytest.raises(OSError) as failed:
            bind_tcp(HOST, taken.getsockname()[1])
        assert failed.value.errno == errno.EADDRINUSE
        assert open_fds() == before


def test_a_gevent_socket_takes_over_a_bind_tcp_listener() -> None:
    """How the gevent shell wraps bind_tcp: the descriptor moves, family and type come from the kernel."""
    sock = bind_tcp(HOST, 0, backlog=8)
    address = sock.getsockname()
    listener = gevent.socket.socket(fileno=sock.detach())
    with listener:
        assert sock.fileno() == -1  # detached: closing the stdlib object can no longer close the listener
        assert (listener.family, listener.type, listener.getsockname()) == (socket.AF_INET, socket.SOCK_STREAM, address)
        with socket.create_connection(address, timeout=5) as client:
            served, peer = listener.accept()
            with served:
                assert peer == client.getsockname()


def test_accept_error_sets_are_disjoint_and_name_the_resource_errors() -> None:
    assert {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM} == ACCEPT_RESOURCE_ERRORS
    assert errno.ECONNABORTED in ACCEPT_PEER_ERRORS
    assert not ACCEPT_RESOURCE_ERRORS & ACCEPT_PEER_ERRORS


# ------------------------------------------------------------------------------------------------ WakePipe


def test_wake_pipe_is_readable_after_wake_until_drained() -> None:
    pipe = WakePipe()
    try:
        assert not readable(pipe.fileno())
        assert pipe.drain() == b""
        pipe.wake()
        pipe.wake()
        assert readable(pipe.fileno())
        assert readable(pipe.fileno())  # level-triggered: waiting does not consume the wake-up
        assert pipe.drain() == b"\0\0"
        assert not readable(pipe.fileno())
    finally:
        pipe.close()


def test_wake_on_a_full_pipe_neither_blocks_nor_raises() -> None:
    pipe = WakePipe()
    try:
        capacity = fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 4096)  # one page: the smallest pipe there is
        for _ in range(capacity + 10):
            pipe.wake()
        assert readable(pipe.fileno())
        assert pipe.drain() == b"\0" * capacity  # the writes past a full pipe were dropped, not queued or raised
        assert not readable(pipe.fileno())
    finally:
        pipe.close()


def test_drain_reads_at_most_a_default_pipe_buffer_per_call() -> None:
    pipe = WakePipe()
    try:
        capacity = fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 4 * 65536)
        for _ in range(2 * 65536):
            pipe.wake()
        assert capacity >= 2 * 65536  # the situation: more waiting than one drain() reads
        assert len(pipe.drain()) == 65536
        assert readable(pipe.fileno())  # the rest wakes the next wait
        assert len(pipe.drain()) == 65536
        assert not readable(pipe.fileno())
    finally:
        pipe.close()


def test_wake_pipe_receives_signal_numbers_from_catch_signals() -> None:
    pipe = WakePipe()
    handled: list[int] = []
    previous_handler = signal.signal(signal.SIGUSR1, lambda signum, _frame: handled.append(signum))
    previous_fd = pipe.catch_signals()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handled == [signal.SIGUSR1]  # the Python handler ran (at the next bytecode), so the C one did
        assert readable(pipe.fileno())
        assert pipe.drain() == bytes([signal.SIGUSR1])
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGUSR1, previous_handler)
        pipe.close()


def test_wake_pipe_close_is_idempotent_and_releases_both_descriptors() -> None:
    before = open_fds()
    pipe = WakePipe()
    assert open_fds() == before + 2
    pipe.close()
    pipe.close()
    assert open_fds() == before
    pipe.wake()  # after close: nothing to wake, and no error for a late signal handler


# ------------------------------------------------------------------------------------------------ linger_close


def wait_for_unread(sock: socket.socket | gevent.socket.socket, count: int) -> None:
    """Until ``count`` bytes wait unread on ``sock`` (they are in flight on loopback; select waits for them)."""
    deadline = time.monotonic() + 5
    while unread_bytes(sock) < count:
        assert time.monotonic() < deadline, f"{count} bytes never arrived"
        select.select([sock], [], [], 0.05)


def test_linger_close_returns_when_the_peer_closes_and_the_last_line_survives(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    served, client = pair
    client.sendall(b"x" * 3 * LINGER_READ)  # unread input: a plain close would answer it with a reset
    wait_for_unread(served, 3 * LINGER_READ)
    served.sendall(b"bye: server shutting down\n")
    assert client.recv(100) == b"bye: server shutting down\n"
    client.close()  # the peer leaves: the linger ends with its FIN, long before the deadline
    started = time.monotonic()
    linger_close(served, 30.0)
    assert time.monotonic() - started < 30.0
    assert unread_bytes(served) == 0


def test_linger_close_waits_out_a_peer_that_stays_and_avoids_the_reset(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    served, client = pair
    client.sendall(b"unread\n")
    wait_for_unread(served, 7)
    served.sendall(b"bye: idle timeout\n")
    started = time.monotonic()
    linger_close(served, 0.3)
    assert time.monotonic() - started >= 0.3  # the peer never closed: the whole linger was spent
    assert unread_bytes(served) == 0
    served.close()
    # Our side was shut down first and the input drained: the client reads the last line and a clean end of file.
    assert client.recv(100) == b"bye: idle timeout\n"
    assert client.recv(100) == b""


def test_linger_close_with_zero_seconds_drops_what_arrived_without_waiting(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    served, client = pair
    client.sendall(b"already here\n")
    wait_for_unread(served, 13)
    linger_close(served, 0.0)  # the peer stays: a wait of any length would hang here for the test timeout
    assert unread_bytes(served) == 0
    assert client.recv(100) == b""  # half-closed


def test_linger_close_works_on_a_gevent_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    stdlib_served, client = pair
    served = gevent.socket.socket(fileno=stdlib_served.detach())
    try:
        client.sendall(b"unread\n")
        wait_for_unread(served, 7)
        served.sendall(b"bye: server full\n")
        started = time.monotonic()
        linger_close(served, 0.2)
        assert time.monotonic() - started >= 0.2
        assert unread_bytes(served) == 0
    finally:
        served.close()
    assert client.recv(100) == b"bye: server full\n"
    assert client.recv(100) == b""


def test_linger_close_swallows_errors_of_a_peer_that_is_gone(pair: tuple[socket.socket, socket.socket]) -> None:
    served, client = pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # SO_LINGER 0: the close sends a reset
    select.select([served], [], [], 5)
    with pytest.raises(ConnectionResetError):
        served.recv(1)  # the situation: the peer's reset has arrived
    started = time.monotonic()
    linger_close(served, 5.0)  # no exception, and no wait on a dead connection
    assert time.monotonic() - started < 5.0
    served.close()
    linger_close(served, 5.0)  # not even on a closed socket
