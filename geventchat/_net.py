"""Standard-library socket pieces every shell shares: the gevent server, the blocking models and the supervisor.

No gevent import here, so the supervising parent (which must never start a hub before it forks) and the blocking
comparison models can use it. Each piece is written once:

- :func:`bind_tcp`: the one way a listener (or a port reservation) is made;
- :data:`ACCEPT_RESOURCE_ERRORS` and :data:`ACCEPT_PEER_ERRORS`: what an accept loop pauses on or skips;
- :class:`IdleExpired`: the one "the client sent nothing in time" exception;
- :class:`WakePipe`: a self-pipe that ``poll()``/``selectors`` can wait on and a signal handler can write to;
- :func:`linger_close`: half-close, then drain for a bounded time, so a reset does not destroy our last line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import struct
import termios
import time

__all__ = [
    "ACCEPT_PEER_ERRORS",
    "ACCEPT_RESOURCE_ERRORS",
    "LINGER_READ",
    "IdleExpired",
    "WakePipe",
    "bind_tcp",
    "linger_close",
    "unread_bytes",
]

#: ``accept()`` errors that mean "out of a resource for now" (ours), not "the listener is broken": pause
#: accepting and try again later.
ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: ``accept()`` errors that are the peer's: the connection was aborted while it waited in the backlog. Skip it and
#: accept the next one.
ACCEPT_PEER_ERRORS = frozenset({errno.ECONNABORTED})
#: Bytes discarded per read while lingering.
LINGER_READ = 16384
# Reads per WakePipe.drain(): 16 x 4 KiB covers a full default pipe buffer (64 KiB), and bounds the loop.
_DRAIN_CHUNK = 4096
_DRAIN_READS = 16


class IdleExpired(Exception):
    """No complete message within the idle timeout (the peer's doing)."""


def bind_tcp(
    host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """A bound (and, with ``listen``, listening) blocking stdlib TCP socket on ``host:port``.

    The address family follows ``host`` (the first ``getaddrinfo`` answer with ``AI_PASSIVE``: an empty host or
    ``::`` binds every address; whether ``::`` also takes IPv4 is the system's ``bindv6only`` default).
    ``SO_REUSEADDR`` is always set, so a restarted server can bind while old connections sit in TIME_WAIT;
    ``SO_REUSEPORT`` is set before ``bind`` when ``reuse_port``, so several processes can share the port. With
    ``listen=False`` the socket is only bound (``backlog`` unused): a port reservation that gets no connections.

    The socket is blocking; make it non-blocking, or hand it to gevent with
    ``gevent.socket.socket(fileno=sock.detach())``. Raises :class:`OSError` if the address is unusable (the
    socket is closed then).
    """
    family, kind, proto, _canonical, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class WakePipe:
    """A non-blocking self-pipe: :meth:`wake` makes :meth:`fileno` readable, so a thread or process waiting in
    ``poll()``/``selectors`` next to its sockets wakes up. :meth:`catch_signals` makes every signal write its
    number into the pipe (:func:`signal.set_wakeup_fd`).

    Level-triggered until :meth:`drain`: a waiter that never drains (a stop flag) stays woken.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def fileno(self) -> int:
        """The read end: wait on it for readability."""
        return self._read_fd

    def wake(self) -> None:
        """Make the pipe readable. One ``write`` of one byte, safe in a signal handler; a full pipe is already
        readable, so that write is dropped. Does nothing once closed."""
        if self._write_fd < 0:
            return  # closed: a late signal handler has nobody left to wake
        with contextlib.suppress(BlockingIOError):
            os.write(self._write_fd, b"\0")

    def catch_signals(self) -> int:
        """Route every signal's number into the pipe from the C-level handler (call from the main thread), so a
        wait on :meth:`fileno` wakes even when the Python handler runs later or in another thread. Returns the
        previous wake-up descriptor (``-1`` for none); ``signal.set_wakeup_fd(-1)`` undoes it."""
        return signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)

    def drain(self) -> bytes:
        """Read and return what was written (signal numbers, one byte each, and :meth:`wake`'s zero bytes);
        empty if nothing was. Reads at most a full pipe buffer: anything written meanwhile wakes the next wait."""
        chunks = []
        for _ in range(_DRAIN_READS):
            try:
                chunk = os.read(self._read_fd, _DRAIN_CHUNK)
            except BlockingIOError:
                break
            chunks.append(chunk)
            if len(chunk) < _DRAIN_CHUNK:
                break
        return b"".join(chunks)

    def close(self) -> None:
        """Close both ends (idempotent). Undo :meth:`catch_signals` first, or signals would be written to a
        closed (or reused) descriptor."""
        for fd in (self._read_fd, self._write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read_fd = self._write_fd = -1


def linger_close(sock: socket.socket, seconds: float) -> None:
    """Half-close ``sock``, then discard input until the peer closes or ``seconds`` pass (a lingering close, as
    nginx does). Does not close ``sock``; never raises :class:`OSError` (the peer may be gone already).

    Closing a socket with unread input makes the kernel send a reset, and a reset can destroy our last line
    (``bye: ...``) before the client reads it. Shutting our sending side down first and draining for a bounded
    time lets the client read everything we sent. With ``seconds=0`` it waits for nothing but still drops what
    has already arrived. Works on any socket with ``settimeout`` (a stdlib or a gevent socket) and leaves it in
    timeout mode.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        while True:  # bounded by the deadline: once it has passed, one last non-blocking read
            remaining = deadline - time.monotonic()
            sock.settimeout(max(0.0, remaining))
            if not sock.recv(LINGER_READ) or remaining <= 0:
                return
    except OSError:  # TimeoutError and BlockingIOError included: the time is up or nothing more has arrived
        pass


def unread_bytes(sock: socket.socket) -> int:
    """Bytes received on ``sock`` and not yet read (the FIONREAD ioctl); -1 if the kernel will not say. A close
    with nothing unread sends a FIN, not a reset, so a caller may skip the lingering close."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])
    except OSError:
        return -1
