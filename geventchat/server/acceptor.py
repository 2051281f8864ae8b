"""The listener and the accept loop: :func:`create_listener`, and :class:`Acceptor`, gevent's StreamServer with an
accept back-off that logs once per episode."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from gevent.server import StreamServer
from gevent.socket import socket as GeventSocket

from .._gevent_fast import pause_accepting, spawn_connection
from .._net import ACCEPT_PEER_ERRORS, ACCEPT_RESOURCE_ERRORS, bind_tcp

__all__ = ["Acceptor", "create_listener"]

# The gevent shell logs under one name, whichever of its modules speaks (operators filter on it).
log = logging.getLogger("geventchat.server")


def create_listener(host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False) -> GeventSocket:
    """A bound, listening gevent TCP socket (IPv4 or IPv6 by ``host``): :func:`geventchat._net.bind_tcp`, handed
    to gevent. ``SO_REUSEPORT`` is set before ``bind`` when asked, so several processes can share the port. Raises
    :class:`OSError` if the address is unusable."""
    return GeventSocket(fileno=bind_tcp(host, port, backlog=backlog, reuse_port=reuse_port).detach())


class Acceptor(StreamServer):
    """A StreamServer whose accept errors are logged once per episode (and at most once per
    :attr:`log_interval`) instead of printed per accept, with a back-off that really backs off. Each accepted
    client's ``handle(sock, address)`` runs in its own raw greenlet."""

    #: Accepts per readiness event; more than gevent's 100 drains a burst of handshakes in fewer loop turns.
    max_accept = 256
    #: First pause (s) after a failed accept; doubled per consecutive failure up to gevent's ``max_delay`` (1 s).
    first_delay = 0.05
    #: Least seconds between two "accept failed" (or two "accepting again") lines: when the open-file limit
    #: flaps (fds freed, the backlog accepted, exhausted again), the log must not flap with it.
    log_interval = 10.0

    def __init__(self, listener: GeventSocket, handle: Callable[[GeventSocket, tuple[str, int]], None]) -> None:
        super().__init__(listener, handle, spawn=spawn_connection)
        self._failed_accepts = 0
        # gevent resets self.delay after every do_read() that returns, so the back-off needs its own state.
        self._backoff = self.first_delay
        self._failure_logged = -math.inf
        self._recovery_logged = -math.inf

    def do_read(self):  # type: ignore[no-untyped-def]
        try:
            accepted = super().do_read()
        except OSError as exc:
            if exc.errno in ACCEPT_PEER_ERRORS:
                return None
            if exc.errno not in ACCEPT_RESOURCE_ERRORS:
                raise
            self._accept_failed(exc)
            return None
        if self._failed_accepts and accepted:
            self._accepting_again()
        return accepted

    def _accept_failed(self, exc: OSError) -> None:
        self._failed_accepts += 1
        now = time.monotonic()
        if now - self._failure_logged >= self.log_interval:
            self._failure_logged = now
            log.warning("accept failed (ours: %s); pausing accepts until resources free up", exc.strerror)
        # The back-off gevent applies to unexpected accept errors, without its traceback per failure.
        pause_accepting(self, self._backoff)
        self._backoff = min(float(self.max_delay), self._backoff * 2)

    def _accepting_again(self) -> None:
        self._backoff = self.first_delay
        now = time.monotonic()
        if now - self._recovery_logged >= self.log_interval:
            self._recovery_logged = now
            log.warning("accepting again after %d failed accepts", self._failed_accepts)
            self._failed_accepts = 0
