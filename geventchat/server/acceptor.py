"""The listener and the accept loop: :func:`create_listener`, and :class:`Acceptor`, gevent's StreamServer with an
accept back-off that logs once per episode (:class:`~geventchat._accept.QuietAcceptServer`, which the metrics
endpoint shares)."""

from __future__ import annotations

from collections.abc import Callable

from gevent.socket import socket as GeventSocket

from .._accept import QuietAcceptServer
from .._gevent_fast import HandlerGreenlets
from .._net import bind_tcp

__all__ = ["Acceptor", "create_listener"]


def create_listener(host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False) -> GeventSocket:
    """A bound, listening gevent TCP socket (IPv4 or IPv6 by ``host``): :func:`geventchat._net.bind_tcp`, handed
    to gevent. ``SO_REUSEPORT`` is set before ``bind`` when asked, so several processes can share the port. Raises
    :class:`OSError` if the address is unusable."""
    return GeventSocket(fileno=bind_tcp(host, port, backlog=backlog, reuse_port=reuse_port).detach())


class Acceptor(QuietAcceptServer):
    """The chat listener's StreamServer: accept errors logged once per episode (under ``geventchat.server``), each
    accepted client's ``handle(sock, address)`` run in its own raw greenlet, reused for a later client once done
    (:class:`~geventchat._gevent_fast.HandlerGreenlets`)."""

    #: Accepts per readiness event; more than gevent's 100 drains a burst of handshakes in fewer loop turns.
    max_accept = 256
    #: Greenlets kept parked after their client left, for the next clients: a new greenlet costs an mmap, page
    #: faults and a munmap for its Python frames (docs/performance.md, churn). A parked one holds what an idle
    #: client's greenlet does (about 6 KB of RSS: a touched page of its 16 KB frame chunk, its saved C stack).
    spare_greenlets = 64

    def __init__(self, listener: GeventSocket, handle: Callable[[GeventSocket, tuple[str, int]], None]) -> None:
        super().__init__(listener, handle)
        self._greenlets = HandlerGreenlets(self, self.spare_greenlets)

    def close(self) -> None:
        super().close()
        self._greenlets.close()  # greenlets still serving a client end with it instead of parking

    def do_handle(self, sock: GeventSocket, address: tuple[str, int]) -> None:
        # gevent's do_handle spawns its own wrapper, one C frame deeper (see _gevent_fast.HandlerGreenlets), in a new
        # greenlet per client.
        try:
            self._greenlets.spawn(sock, address)
        except Exception:
            sock.close()  # as gevent's do_handle: a client we could not start a greenlet for is not left open
            raise
