"""The supervisor's listening sockets, one per worker slot (see :mod:`geventchat.workers`). Stdlib only: the
supervising parent never touches gevent."""

from __future__ import annotations

import socket

from ._net import bind_tcp

__all__ = ["SlotSockets"]


class SlotSockets:
    """One ``SO_REUSEPORT`` listening socket per worker slot, held open by the supervising parent so that a
    replacement worker takes over the same accept queue (connections that arrive meanwhile wait in it instead of
    being refused). The first slot bound learns the concrete port (for port 0); every other slot joins it."""

    def __init__(self, host: str, backlog: int) -> None:
        self._host = host
        self._backlog = backlog
        self._sockets: dict[int, socket.socket] = {}
        #: ``(host, port)`` bound, once :meth:`open` has run.
        self.address: tuple[str, int] | None = None

    def open(self, count: int, port: int) -> tuple[str, int]:
        """Bind slots ``0..count-1`` on ``port`` (0: a free one, shared by all). Returns the address bound; raises
        :class:`OSError` if it cannot be bound."""
        first = self._bind(0, port)
        self.address = first.getsockname()[:2]
        for index in range(1, count):
            self._bind(index, self.address[1])
        return self.address

    def add(self, index: int) -> None:
        """Bind slot ``index`` on the port of the others, unless it is bound already."""
        if index not in self._sockets:
            assert self.address is not None, "open() first"
            self._bind(index, self.address[1])

    def remove(self, index: int) -> None:
        """Close our copy of slot ``index``'s socket; the slot's worker holds the last copy, its shutdown closes
        it."""
        sock = self._sockets.pop(index, None)
        if sock is not None:
            sock.close()

    def take(self, index: int) -> socket.socket:
        """In a forked worker: slot ``index``'s socket, every other slot's copy closed (another slot's socket
        must not outlive its slot because this worker holds it)."""
        sock = self._sockets.pop(index)
        self.close()
        return sock

    def close(self) -> None:
        """Close every slot's socket (idempotent)."""
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def _bind(self, index: int, port: int) -> socket.socket:
        sock = bind_tcp(self._host, port, backlog=self._backlog, reuse_port=True)
        self._sockets[index] = sock
        return sock
