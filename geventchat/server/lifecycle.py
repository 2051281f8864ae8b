"""The server's lifecycle: :class:`ChatServer` starts, serves, shuts down gracefully or stops, and reports its
statistics. Accepting is :mod:`.acceptor`'s, deciding whom to serve :mod:`.admission`'s, serving one client
:mod:`.connection`'s."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import socket
import ssl
import time
from typing import TYPE_CHECKING

import gevent
import gevent.event
from gevent import Greenlet
from gevent.socket import socket as GeventSocket
from greenlet import GreenletExit

from .._gevent_fast import call_soon, throw
from ..chat.rooms import LocalRooms, RoomService, RoomsOff
from ..config import ServerConfig
from ..protocol import CloseReason, format_peer
from ..stats import INTERNAL_ERROR, ServerStats
from .acceptor import Acceptor, create_listener
from .admission import Admission
from .connection import Connection

if TYPE_CHECKING:
    from ..chat.redis_rooms import RedisRooms
    from ..metrics import MetricsEndpoint

__all__ = ["ChatServer"]


def _server_id() -> str:
    """Unique in a deployment: host, process and a random part (a restarted process may reuse a pid)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}".replace(" ", "_").replace("/", "_")


# The gevent shell logs under one name, whichever of its modules speaks (operators filter on it).
log = logging.getLogger("geventchat.server")

#: Seconds ``start()`` waits for the Redis broker's first answer before accepting clients (``--redis``).
BROKER_WAIT = 5.0


class ChatServer:
    """A geventchat server: one greenlet per client over a gevent :class:`~gevent.server.StreamServer`.

    ``start()`` binds (unless given a ``listener``) and starts accepting; ``serve_forever()`` blocks until
    ``shutdown()`` or ``stop()``. ``shutdown()`` is the graceful path: stop accepting, tell every client
    ``bye: server shutting down``, wait up to ``config.grace`` seconds for them to leave, close the rest.
    """

    #: Seconds a new connection gets to send its whole PROXY protocol header (``config.proxy_protocol``). A load
    #: balancer sends it at once, so anything slower is a misconfigured or hostile peer.
    proxy_header_timeout = 5.0

    def __init__(
        self,
        config: ServerConfig,
        *,
        listener: GeventSocket | None = None,
        metrics_labels: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self._metrics_labels = metrics_labels  # e.g. {"worker": "2"}: added to every metrics series
        self.stats = ServerStats()
        if config.metrics_port is not None:
            self.stats.time_latency()  # the histograms only the metrics export
        self._listener = listener
        self._connections: set[Connection] = set()
        self._acceptor: Acceptor | None = None
        self._address: tuple[str, int] | None = None
        self._stopped = gevent.event.Event()
        self._drained = gevent.event.Event()
        self._drained.set()
        self._shutting_down = False
        self._stats_greenlet: Greenlet | None = None
        #: The server's TLS context (from ``config.tls_cert``), or None for plain TCP.
        self.tls: ssl.SSLContext | None = None
        if config.tls_cert is not None:
            from ..tls import server_context

            self.tls = server_context(config.tls_cert, config.tls_key)
        self._admission = Admission(config, self.stats, self.tls)
        #: Where rooms live (``config.chat``): in memory, or off with several workers; None with chat off.
        self.rooms: RoomService | None = None
        self._redis_rooms: RedisRooms | None = None
        chat = config.chat
        if chat.enabled and chat.redis is not None:
            from ..chat.redis_rooms import RedisRooms

            self.rooms = self._redis_rooms = RedisRooms(
                chat.redis,
                server_id=_server_id(),
                presence_ttl=chat.presence_ttl,
                max_rooms=chat.max_rooms,
                max_line=config.protocol.max_line,
            )
        elif chat.enabled:
            max_line = config.protocol.max_line
            self.rooms = RoomsOff() if chat.workers > 1 else LocalRooms(chat.max_rooms, max_line=max_line)
        #: The Prometheus endpoint (``config.metrics_port``), once started.
        self.metrics: MetricsEndpoint | None = None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound (the real port when configured with port 0)."""
        if self._address is None:
            raise RuntimeError("the server is not started")
        return self._address

    @property
    def connection_limit(self) -> int:
        return self._admission.limit

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def start(self) -> None:
        """Bind (if no listener was given) and start accepting. Raises :class:`OSError` if binding fails."""
        if self._listener is None:
            self._listener = create_listener(self.config.host, self.config.port, backlog=self.config.backlog)
        host, port = self._listener.getsockname()[:2]
        # Linux copies TCP_NODELAY from a listener to the sockets it accepts: set once here rather than with one
        # setsockopt() per connection (tests/test_server.py checks an accepted socket has it).
        self._listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._address = (host, port)
        if self._redis_rooms is not None:
            # Before accepting: with the broker up, rooms work from the first client on (the listening line
            # follows this). A broker that does not answer does not stop the server: echo works, room commands
            # answer 'rooms unavailable' until it does, and the backbone logs that once ('redis broker lost').
            from ..chat.redis_rooms import BrokerUnavailable

            with contextlib.suppress(BrokerUnavailable):
                self._redis_rooms.start(wait=BROKER_WAIT)
        self._acceptor = Acceptor(self._listener, self._handle)
        self._acceptor.start()
        if self.config.metrics_port is not None:
            from ..metrics import MetricsEndpoint

            self.metrics = MetricsEndpoint(
                self.stats, self.config.metrics_host, self.config.metrics_port, self._metrics_labels
            )
            self.metrics.start()
        if self.config.stats_interval > 0:
            self._stats_greenlet = gevent.spawn(self._report_stats, self.config.stats_interval)

    def serve_forever(self) -> None:
        """Start if needed, then block until the server has stopped."""
        if self._acceptor is None:
            self.start()
        self._stopped.wait()

    def shutdown(self, grace: float | None = None) -> None:
        """Graceful stop (see the class docstring). Blocks until every connection is gone."""
        grace = self.config.grace if grace is None else grace
        self._shutting_down = True
        if self._acceptor is not None:
            self._acceptor.close()
        for connection in list(self._connections):
            connection.request_shutdown()
        if not self._drained.wait(grace):
            log.info("grace period over; closing %d remaining connections", len(self._connections))
            self._kill_connections(1.0)
        self._finish()

    def stop(self) -> None:
        """Immediate stop: close the listener and every connection without notices."""
        self._shutting_down = True
        if self._acceptor is not None:
            self._acceptor.close()
        self._kill_connections(1.0)
        self._finish()

    def _kill_connections(self, timeout: float) -> None:
        # Connection greenlets are raw greenlets, which gevent.killall(block=True) cannot join: throw GreenletExit
        # into each and wait for the last one to leave (each removes itself from _connections on the way out).
        # Thrown from the hub's next turn, as gevent.kill does, but only into a connection still being served: a
        # greenlet whose client left meanwhile may be serving (or rejecting) the next client (spare_greenlets).
        for connection in list(self._connections):
            call_soon(functools.partial(self._kill_connection, connection))
        self._drained.wait(timeout)

    def _kill_connection(self, connection: Connection) -> None:
        if connection in self._connections and not connection.greenlet.dead:
            throw(connection.greenlet, GreenletExit())

    def _finish(self) -> None:
        if self._stats_greenlet is not None:
            self._stats_greenlet.kill(block=False)
        if self.metrics is not None:
            self.metrics.stop()
        if self._redis_rooms is not None:
            self._redis_rooms.stop()  # parts whoever is left (server shutting down) and withdraws our heartbeat
        self._stopped.set()

    # -- per connection, in its own greenlet

    def _handle(self, sock: GeventSocket, address: tuple[str, int]) -> None:
        if self._shutting_down:
            # Accepted in the same loop turn the shutdown began (or queued before the acceptor closed): say why,
            # rather than close without a word (the socket is closed when we return).
            self._admission.reject(sock, address, CloseReason.SHUTDOWN, len(self._connections))
            return
        admission = self._admission
        if not admission.has_room(sock, address, len(self._connections)):
            return
        if self.config.proxy_protocol:
            # Behind a load balancer: everything below (the per-address cap, logs) is about the real client.
            real = admission.read_proxy_header(sock, address, self.proxy_header_timeout)
            if real is None or self._shutting_down:
                return
            address = real
        host = admission.acquire(sock, address, len(self._connections))
        if host is None:
            return
        try:
            self._serve(sock, address)
        finally:
            admission.release(host)

    def _serve(self, sock: GeventSocket, address: tuple[str, int]) -> None:
        connection = Connection(self, sock, address)
        self._connections.add(connection)
        self._drained.clear()
        stats = self.stats
        stats.current += 1
        stats.total += 1
        try:
            reason, detail = connection.run()
        except Exception:
            # Our bug, not the peer's: log it here so it never reaches the hub's printer or other clients.
            log.exception("internal error serving %s", format_peer(address))
            reason = detail = INTERNAL_ERROR
        finally:
            if connection.sock is not sock:
                connection.sock.close()  # the TLS wrapper owns the fd; the server closes only the plain socket
            stats.current -= 1
            self._connections.discard(connection)
            if not self._connections:
                self._drained.set()
        stats.count_close(reason)
        if connection.member is not None:
            connection.member.part(reason)  # the room hears why: quit, idle timeout, reset, server shutting down
        if connection.debug:
            log.debug("%s disconnected: %s", format_peer(address), detail)

    def _report_stats(self, interval: float) -> None:
        stats = self.stats
        last = (time.monotonic(), stats.messages, stats.bytes_in, stats.bytes_out)
        while True:  # until _finish kills this greenlet
            gevent.sleep(interval)
            now = (time.monotonic(), stats.messages, stats.bytes_in, stats.bytes_out)
            elapsed = max(now[0] - last[0], 1e-9)
            log.info(
                "connections %d current, %d total; %.0f messages/s; %.0f bytes/s in, %.0f bytes/s out",
                stats.current,
                stats.total,
                (now[1] - last[1]) / elapsed,
                (now[2] - last[2]) / elapsed,
                (now[3] - last[3]) / elapsed,
            )
            last = now
