"""The gevent shell: accept, one greenlet per client, read → feed → write, idle timeouts, graceful shutdown.

The conversation itself lives in :mod:`geventchat.protocol`; this module only moves bytes and keeps time.
Nothing here monkey-patches: it uses gevent's own socket API, and ``gevent.Timeout`` for every wait that has a
deadline (the idle and handshake timeouts, the lingering close).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import socket
import ssl
import struct
import termios
import time
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
from gevent import Greenlet
from gevent.server import StreamServer
from gevent.socket import socket as GeventSocket
from greenlet import greenlet as RawGreenlet

from .config import ServerConfig
from .limits import AddressLimiter
from .protocol import CloseReason, ServerConversation, describe_event, format_peer
from .proxy_protocol import InvalidProxyHeader, ProxyHeaderReader
from .stats import INTERNAL_ERROR, INVALID_PROXY_HEADER, RESET, TLS_ERROR, ServerStats

if TYPE_CHECKING:
    from .metrics import MetricsEndpoint

__all__ = ["ChatServer", "ServerStats", "create_listener"]

log = logging.getLogger("geventchat.server")

# accept() errors that mean "out of a resource for now", not "the listener is broken".
_ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Clients rejected with 'bye: server full' that may linger at once; past this they are closed without the
# lingering close, so a connection flood cannot pin an unbounded number of sockets.
_MAX_LINGERING_REJECTS = 256
# Bytes discarded per read while lingering.
_LINGER_READ = 16384
# _Connection._armed_for while the handshake timeout runs: differs from every idle timeout, so the first events
# after the handshake re-arm the connection's Timeout for the negotiated idle timeout.
_IN_HANDSHAKE = -1.0


class IdleAlarm(Exception):
    """Raised in a connection's greenlet (and only there) by its ``gevent.Timeout``: the idle deadline may have
    passed. Whoever catches it asks :meth:`_Connection._check_deadline`, which re-arms for the time left if messages
    moved the deadline meanwhile, or raises :class:`IdleExpired`."""


class IdleExpired(Exception):
    """No complete message within the idle timeout (the peer's doing)."""


class IdleTimeout(gevent.Timeout):
    """The ``gevent.Timeout`` each connection keeps pending, with its attributes in slots instead of a dict.

    One is pending per connection for as long as the client stays. A plain ``gevent.Timeout`` stores its four
    attributes in the instance ``__dict__`` that BaseException provides (created on the first attribute stored
    outside a slot): 184 bytes of the 0.33 KB per idle client it adds over a bare loop timer, against 0.19 KB with
    slots (docs/performance.md). ``__slots__`` names every attribute ``gevent.Timeout.__init__`` sets, and a test
    pins the list: an attribute a later gevent adds would go to a dict again, bigger but still correct.
    """

    __slots__ = ("_one_shot", "exception", "seconds", "timer")


class ShutdownRequested(Exception):
    """Thrown into a connection's greenlet when the server begins a graceful shutdown, and only while it waits for
    input (see :meth:`_Connection.request_shutdown`): sends and closes never see it, so no reply is cut short."""


class _LingerOver(Exception):
    pass


class _WindowOver(Exception):
    pass


class _ProxyHeaderLate(Exception):
    pass


class _TLSHandshakeExpired(Exception):
    """The handshake timeout passed before the TLS handshake finished (no ``bye:`` can be sent in clear)."""


def create_listener(host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False) -> GeventSocket:
    """A bound, listening gevent TCP socket (IPv4 or IPv6 by ``host``). ``SO_REUSEPORT`` is set before ``bind``
    when asked, so several processes can share the port. Raises :class:`OSError` if the address is unusable."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _canon, address = infos[0]
    sock = GeventSocket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _spawn_connection(function: Any, *args: object) -> RawGreenlet:
    """Start ``function(*args)`` in a raw greenlet on the next loop turn (``gevent.spawn_raw`` without the
    greenlet-tree tracking). A gevent.Greenlet would keep links, a result slot and a captured spawning stack per
    idle client (about 0.7 KB), and add a C frame to the stack greenlet saves while the client is idle."""
    hub = gevent.get_hub()
    glet = RawGreenlet(function, hub)
    hub.loop.run_callback(glet.switch, *args)
    return glet


class _Acceptor(StreamServer):
    """A StreamServer whose accept errors are logged once per episode (and at most once per
    :attr:`log_interval`) instead of printed per accept, with a back-off that really backs off."""

    #: Accepts per readiness event; more than gevent's 100 drains a burst of handshakes in fewer loop turns.
    max_accept = 256
    #: First pause (s) after a failed accept; doubled per consecutive failure up to gevent's ``max_delay`` (1 s).
    first_delay = 0.05
    #: Least seconds between two "accept failed" (or two "accepting again") lines: when the open-file limit
    #: flaps (fds freed, the backlog accepted, exhausted again), the log must not flap with it.
    log_interval = 10.0

    def __init__(self, listener: GeventSocket, handle: object) -> None:
        super().__init__(listener, handle, spawn=_spawn_connection)
        self._failed_accepts = 0
        # gevent resets self.delay after every do_read() that returns, so the back-off needs its own state.
        self._backoff = self.first_delay
        self._failure_logged = -math.inf
        self._recovery_logged = -math.inf

    def do_read(self):  # type: ignore[no-untyped-def]
        try:
            accepted = super().do_read()
        except OSError as exc:
            if exc.errno == errno.ECONNABORTED:
                return None
            if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                raise
            self._failed_accepts += 1
            now = time.monotonic()
            if now - self._failure_logged >= self.log_interval:
                self._failure_logged = now
                log.warning("accept failed (ours: %s); pausing accepts until resources free up", exc.strerror)
            # The back-off gevent applies to unexpected accept errors, without its traceback per failure.
            self.stop_accepting()
            self._timer = self.loop.timer(self._backoff)
            self._timer.start(self._start_accepting_if_started)
            self._backoff = min(float(self.max_delay), self._backoff * 2)
            return None
        if self._failed_accepts and accepted:
            self._backoff = self.first_delay
            now = time.monotonic()
            if now - self._recovery_logged >= self.log_interval:
                self._recovery_logged = now
                log.warning("accepting again after %d failed accepts", self._failed_accepts)
                self._failed_accepts = 0
        return accepted


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
        self._limit = config.connection_limit
        self._connections: set[_Connection] = set()
        self._lingering_rejects = 0
        self._acceptor: _Acceptor | None = None
        self._address: tuple[str, int] | None = None
        self._stopped = gevent.event.Event()
        self._drained = gevent.event.Event()
        self._drained.set()
        self._shutting_down = False
        self._stats_greenlet: Greenlet | None = None
        self._per_ip = AddressLimiter(config.max_per_ip) if config.max_per_ip is not None else None
        self._rejecting_full = 0  # clients rejected in the current 'server full' episode (logged once)
        self._awaiting_header = 0  # connections still sending their PROXY header (they count toward the limit)
        #: The server's TLS context (from ``config.tls_cert``), or None for plain TCP.
        self.tls: ssl.SSLContext | None = None
        if config.tls_cert is not None:
            from .tls import server_context

            self.tls = server_context(config.tls_cert, config.tls_key)
        #: The Prometheus endpoint (``config.metrics_port``), once started.
        self.metrics: MetricsEndpoint | None = None

    # -- lifecycle

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound (the real port when configured with port 0)."""
        if self._address is None:
            raise RuntimeError("the server is not started")
        return self._address

    @property
    def connection_limit(self) -> int:
        return self._limit

    def start(self) -> None:
        """Bind (if no listener was given) and start accepting. Raises :class:`OSError` if binding fails."""
        if self._listener is None:
            self._listener = create_listener(self.config.host, self.config.port, backlog=self.config.backlog)
        host, port = self._listener.getsockname()[:2]
        self._address = (host, port)
        self._acceptor = _Acceptor(self._listener, self._handle)
        self._acceptor.start()
        if self.config.metrics_port is not None:
            from .metrics import MetricsEndpoint

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
        for connection in list(self._connections):
            gevent.kill(connection.greenlet)
        self._drained.wait(timeout)

    def _finish(self) -> None:
        if self._stats_greenlet is not None:
            self._stats_greenlet.kill(block=False)
        if self.metrics is not None:
            self.metrics.stop()
        self._stopped.set()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    # -- per connection

    def _handle(self, sock: GeventSocket, address: tuple[str, int]) -> None:
        if self._shutting_down:
            return  # the socket is closed when we return
        if len(self._connections) + self._awaiting_header >= self._limit:
            self._reject_full(sock, address)
            return
        if self._rejecting_full:
            log.warning("accepting clients again after rejecting %d (server full)", self._rejecting_full)
            self._rejecting_full = 0
        if self.config.proxy_protocol:
            # Behind a load balancer: everything below (the per-address cap, logs) is about the real client.
            self._awaiting_header += 1
            try:
                real = self._read_proxy_header(sock, address)
            finally:
                self._awaiting_header -= 1
            if real is None or self._shutting_down:
                return
            address = real
        per_ip = self._per_ip
        host = address[0] if isinstance(address, tuple) else str(address)
        if per_ip is not None and not per_ip.acquire(host):
            self._reject(sock, address, CloseReason.TOO_MANY_FROM_ADDRESS)
            return
        try:
            self._serve(sock, address)
        finally:
            if per_ip is not None:
                per_ip.release(host)

    def _read_proxy_header(self, sock: GeventSocket, address: tuple[str, int]) -> tuple[str, int] | None:
        """Read the load balancer's PROXY header and return the client address it names (the connection's own for
        a LOCAL or UNKNOWN header, as health checks send). ``None``, logged and counted, if there is none.

        Byte-exact: it peeks, and consumes only the header's bytes, so what follows (the client's first line, or
        its TLS ClientHello) stays in the socket for the conversation.
        """
        reader = ProxyHeaderReader()
        try:
            with gevent.Timeout(self.proxy_header_timeout, _ProxyHeaderLate):
                while True:
                    peeked = sock.recv(reader.max_length, socket.MSG_PEEK)
                    try:
                        header = reader.receive_data(peeked)
                    except InvalidProxyHeader:
                        sock.recv(len(peeked))  # take the refused bytes: closing then sends a FIN, not a reset
                        raise
                    # Until the header is complete every peeked byte is part of it; then only up to its end.
                    used = len(peeked) - len(reader.leftover) if header is not None else len(peeked)
                    while used > 0:
                        chunk = sock.recv(used)  # already buffered: returns at once
                        if not chunk:
                            raise InvalidProxyHeader("connection closed inside the PROXY protocol header")
                        used -= len(chunk)
                    if header is not None:
                        return header.source or address
        except OSError as exc:
            self.stats.count_close(RESET)
            log.debug("%s: connection error (peer's side): %s", format_peer(address), exc.strerror or exc)
            return None
        except _ProxyHeaderLate:
            reason = f"no complete header within {self.proxy_header_timeout:g}s"
        except InvalidProxyHeader as exc:
            reason = exc.reason
        log.warning(
            "%s: closed: invalid PROXY protocol header (the load balancer's side: does it send one, "
            "e.g. HAProxy 'send-proxy'?): %s",
            format_peer(address),
            reason,
        )
        self.stats.count_close(INVALID_PROXY_HEADER)
        return None

    def _serve(self, sock: GeventSocket, address: tuple[str, int]) -> None:
        connection = _Connection(self, sock, address)
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
        if connection.debug:
            log.debug("%s disconnected: %s", format_peer(address), detail)

    def _reject_full(self, sock: GeventSocket, address: tuple[str, int]) -> None:
        self.stats.rejected_full += 1
        if not self._rejecting_full:
            # Once per episode: a flood must not turn into a log flood.
            log.warning("connection limit (%d) reached; rejecting new clients with 'bye: server full'", self._limit)
        self._rejecting_full += 1
        self._reject(sock, address, CloseReason.SERVER_FULL)

    def _reject(self, sock: GeventSocket, address: tuple[str, int], reason: CloseReason) -> None:
        """Tell a client we will not serve it (``bye: <reason>`` instead of the greeting), then close."""
        self.stats.count_close(reason.value)
        log.debug("%s rejected: %s (%d connections)", format_peer(address), reason.value, len(self._connections))
        if self._lingering_rejects >= _MAX_LINGERING_REJECTS and self.tls is not None:
            return  # a TLS bye needs a handshake: past the cap, close at once
        self._lingering_rejects += 1
        try:
            if self.tls is not None:
                try:
                    with gevent.Timeout(self.config.linger, _LingerOver):
                        sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                        sock.do_handshake()
                except (OSError, _LingerOver):
                    sock.close()
                    return
            bye = ServerConversation.reject(reason)
            try:
                if sock.send(bye) == len(bye):
                    self.stats.notices += 1
                    self.stats.bytes_out += len(bye)
            except OSError:
                return
            if self._lingering_rejects <= _MAX_LINGERING_REJECTS:
                linger_close(sock, self.config.linger)
        finally:
            self._lingering_rejects -= 1
            if self.tls is not None:
                sock.close()

    def _report_stats(self, interval: float) -> None:
        stats = self.stats
        last = (time.monotonic(), stats.messages, stats.bytes_in, stats.bytes_out)
        while True:
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


_switch = RawGreenlet.switch
_throw = RawGreenlet.throw


def linger_close(sock: GeventSocket, seconds: float) -> None:
    """Half-close, then discard input until the peer closes or ``seconds`` pass (a lingering close, as nginx does).

    Closing a socket with unread input makes the kernel send a reset, and a reset can destroy our last line
    (``bye: ...``) before the client reads it. Shutting down our sending side first and draining for a bounded
    time lets the client read everything we sent.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        with gevent.Timeout(seconds, _LingerOver):
            while sock.recv(_LINGER_READ):
                pass
    except (OSError, _LingerOver):
        pass


class _Connection:
    """One client's greenlet state. ``run()`` is the read → feed → write loop."""

    __slots__ = (
        "_accepted_at",
        "_armed_for",
        "_deadline",
        "_reading",
        "_shutdown_requested",
        "_timeout",
        "_write_cut",
        "address",
        "conversation",
        "debug",
        "greenlet",
        "server",
        "sock",
    )

    def __init__(self, server: ChatServer, sock: GeventSocket, address: tuple[str, int]) -> None:
        self.server = server
        self.sock = sock
        self.address = address
        self.greenlet = gevent.getcurrent()
        self.conversation = ServerConversation(server.config.protocol)
        self.debug = log.isEnabledFor(logging.DEBUG)
        self._timeout: IdleTimeout | None = None
        self._armed_for = 0.0
        self._deadline = 0.0
        self._reading = False
        self._shutdown_requested = False
        self._write_cut = False
        # Only the handshake-latency metric reads it: no float kept per idle client without metrics.
        self._accepted_at = time.monotonic() if server.stats.handshake_latency is not None else 0.0

    def request_shutdown(self) -> None:
        """Ask this connection to say ``bye: server shutting down`` and close, without cutting a reply short."""
        self._shutdown_requested = True
        if self._reading:
            # Blocked waiting for input: interrupt the wait, from the hub's next turn. By then input may have woken
            # the connection and it may be sending or closing, where a throw could escape the handler (and reach
            # the hub's printer): _interrupt_wait throws only if it is still waiting. Otherwise the loop sees the
            # flag before its next read.
            gevent.get_hub().loop.run_callback(self._interrupt_wait)

    def _interrupt_wait(self) -> None:
        if self._reading and not self.greenlet.dead:
            _throw(self.greenlet, ShutdownRequested())

    def run(self) -> tuple[str, str]:
        """Serve the conversation; returns why it ended: ``(reason, detail)``, the reason one of a small fixed set
        (for statistics and metrics labels), the detail with the peer's error text (for the log)."""
        sock = self.sock
        conversation = self.conversation
        stats = self.server.stats
        config = self.server.config
        recv_size = config.recv_size
        reply_latency = stats.reply_latency
        received_at = 0.0
        notices_counted = 0  # conversation.notices_queued already added to stats.notices
        if self.debug:
            log.debug("%s connected", format_peer(self.address))
        hub = gevent.get_hub()
        # Waiting for input *before* recv() spares the recv() that would fail with EAGAIN (and the exception gevent
        # raises and catches for it) on every message of a request/reply client. The socket's own read watcher is
        # idle whenever we are not inside sock.recv(), so it is borrowed rather than adding one. Not under TLS:
        # decrypted bytes can be waiting in the TLS layer while the socket itself has nothing to read.
        readable: Any = None
        own_watcher = False
        if self.server.tls is None:
            readable = getattr(sock, "_read_event", None)
            if readable is None:
                readable = hub.loop.io(sock.fileno(), 1)
                own_watcher = True
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Until the timeout line arrives the (shorter) handshake timeout applies; see _handshake_over.
            self._arm(min(config.handshake_timeout, conversation.idle_timeout))
            self._armed_for = _IN_HANDSHAKE
            if self.server.tls is not None:
                sock = self._tls_handshake(self.server.tls)
            self._write(conversation.data_to_send())
            while not conversation.closed:
                if self._shutdown_requested:
                    conversation.close(CloseReason.SHUTDOWN)
                    break
                data = self._recv(recv_size, hub, readable)
                if reply_latency is not None:
                    received_at = time.perf_counter()
                before = conversation.messages_received
                events = conversation.receive_data(data)
                # Only a chunk that completed nothing can leave auto framing undecided: skip the check otherwise.
                if not events and conversation.awaiting_framing_decision:
                    events += self._detect_framing(config.raw_detect_window)
                if events:
                    # Events mean a complete line arrived (answered or refused with 'error:'): activity either way.
                    self._deadline = time.monotonic() + conversation.idle_timeout
                    if conversation.messages_received != before:
                        stats.messages += conversation.messages_received - before
                    if conversation.idle_timeout != self._armed_for:
                        if self._armed_for == _IN_HANDSHAKE:
                            self._handshake_over()
                        self._arm(conversation.idle_timeout)
                    if self.debug:
                        for event in events:
                            log.debug("%s: %s", format_peer(self.address), describe_event(event))
                stats.bytes_in += len(data)
                out = conversation.data_to_send()
                if out:
                    self._write(out)
                    # Counted after the write: one that raised (cut short, reset) sent these replies to no one.
                    stats.replies += conversation.messages_received - before
                    if conversation.notices_queued != notices_counted:
                        stats.notices += conversation.notices_queued - notices_counted
                        notices_counted = conversation.notices_queued
                    if reply_latency is not None:
                        reply_latency.observe(time.perf_counter() - received_at)
                # Drop this chunk's bytes and events before blocking again: an idle client should not pin them.
                del data, events, out
        except IdleExpired:
            # The handshake timeout is what expired only when it is the shorter of the two.
            in_handshake = not conversation.handshake_done and config.handshake_timeout < conversation.idle_timeout
            conversation.close(CloseReason.HANDSHAKE_TIMEOUT if in_handshake else CloseReason.IDLE_TIMEOUT)
        except ShutdownRequested:
            conversation.close(CloseReason.SHUTDOWN)
        except _TLSHandshakeExpired:
            return CloseReason.HANDSHAKE_TIMEOUT.value, CloseReason.HANDSHAKE_TIMEOUT.value
        except ssl.SSLError as exc:  # not TLS, a bad certificate, a TLS alert: the peer's side too
            return TLS_ERROR, f"tls error: {exc.reason or exc}"
        except OSError as exc:
            return RESET, f"connection error (peer's side): {exc.strerror or exc}"
        finally:
            # Also on the way out of a kill (GreenletExit): a Timeout left pending would fire into a dead greenlet.
            self._disarm()
            if own_watcher:
                readable.close()
        reason = conversation.close_reason
        if reason is CloseReason.PEER_CLOSED:
            return str(reason.value), str(reason.value)
        # We are closing: send what is queued (the reply to ':q' or a 'bye:'), then close without a reset. After a
        # cut write the peer is not reading: no last line to protect.
        queued = conversation.data_to_send()
        if not self._write_cut and self._flush(queued, config.linger):
            stats.bytes_out += len(queued)
            stats.notices += conversation.notices_queued - notices_counted
            # After ':q' with nothing unread a plain close sends a FIN, not a reset: the lingering (a shutdown, a
            # wait and a read per connection) is skipped, and connection churn is mostly such closes.
            polite = reason is CloseReason.QUIT and self.server.tls is None and _unread_bytes(self.sock) == 0
            if not polite:
                linger_close(self.sock, config.linger)
        text = str(reason.value) if reason is not None else "closed"
        return text, text

    def _handshake_over(self) -> None:
        latency = self.server.stats.handshake_latency
        if latency is not None:
            latency.observe(time.monotonic() - self._accepted_at)

    def _tls_handshake(self, context: ssl.SSLContext) -> GeventSocket:
        """Wrap our socket in TLS and finish the TLS handshake under the (already armed) handshake timeout."""
        self.sock = context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        while True:
            try:
                self.sock.do_handshake()
                return self.sock
            except IdleAlarm:
                try:
                    self._check_deadline()
                except IdleExpired:
                    raise _TLSHandshakeExpired() from None

    # -- blocking operations, each interruptible by the idle alarm and by shutdown

    def _recv(self, size: int, hub: Any = None, readable: Any = None) -> bytes:
        """Wait for ``readable`` first when given (see :meth:`run`); ``recv()`` still waits by itself if the
        wake-up was spurious."""
        self._reading = True
        try:
            while True:
                try:
                    if readable is not None:
                        # hub.wait(readable) without its Waiter and Hub.switch: fewer C frames in the stack that
                        # greenlet saves for every idle client. Timers and kills arrive as exceptions from here.
                        readable.start(self.greenlet.switch)
                        try:
                            _switch(hub)
                        finally:
                            readable.stop()
                        readable = None
                    data: bytes = self.sock.recv(size)
                    return data
                except IdleAlarm:
                    self._check_deadline()
        finally:
            self._reading = False

    def _write(self, data: bytes) -> None:
        # The common case, a reply the socket buffer takes whole, needs no memoryview and no loop.
        sent = 0
        try:
            sent = self.sock.send(data)
        except IdleAlarm:
            self._check_deadline()  # nothing of this write went out: an IdleExpired here cuts nothing
        if sent != len(data):
            self._write_rest(data, sent)
        self.server.stats.bytes_out += len(data)

    def _write_rest(self, data: bytes, offset: int) -> None:
        view = memoryview(data)[offset:]
        try:
            while view:
                try:
                    sent = self.sock.send(view)
                except IdleAlarm:
                    try:
                        self._check_deadline()
                    except IdleExpired:
                        # Part of this write went out: a bye now would be glued to half a reply line.
                        self._write_cut = len(view) != len(data)
                        raise
                    continue
                view = view[sent:]
        finally:
            view.release()

    def _detect_framing(self, window: float) -> list:  # type: ignore[type-arg]
        """Auto framing: bytes without a newline are pending. Wait the window for more; no newline → raw."""
        conversation = self.conversation
        events: list = []  # type: ignore[type-arg]
        deadline = time.monotonic() + window
        while conversation.awaiting_framing_decision:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                events += conversation.settle_framing()
                break
            try:
                with gevent.Timeout(remaining, _WindowOver):
                    data = self._recv(self.server.config.recv_size)
            except _WindowOver:
                events += conversation.settle_framing()
                break
            self.server.stats.bytes_in += len(data)
            events += conversation.receive_data(data)
        return events

    # -- the idle timeout: one gevent.Timeout per connection, re-armed lazily

    def _arm(self, seconds: float) -> None:
        """(Re)start the idle timeout for ``seconds`` from now.

        Messages do not restart the Timeout (that would allocate one per message); they move ``_deadline``. When it
        fires early because messages arrived meanwhile, :meth:`_check_deadline` re-arms it for what is left.
        """
        self._deadline = time.monotonic() + seconds
        self._armed_for = seconds
        self._start_timeout(seconds)

    def _start_timeout(self, seconds: float) -> None:
        # A gevent.Timeout's duration is fixed when it is made, so re-arming for another duration replaces it: one
        # pending per connection at any time. Given the IdleAlarm class (not an instance), gevent raises a fresh
        # IdleAlarm when it fires, so no exception object is kept per idle client. Started here, in the
        # connection's own greenlet, which is where gevent raises it.
        if self._timeout is not None:
            self._timeout.close()
        self._timeout = timeout = IdleTimeout(seconds, IdleAlarm)
        timeout.start()

    def _check_deadline(self) -> None:
        """After an :class:`IdleAlarm`: raise :class:`IdleExpired` if the deadline has passed, else re-arm."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise IdleExpired()
        self._start_timeout(remaining)

    def _disarm(self) -> None:
        if self._timeout is not None:
            self._timeout.close()
            self._timeout = None

    def _flush(self, data: bytes, linger: float) -> bool:
        """Send the last bytes (a ``bye:``, or nothing) within ``linger`` seconds. Returns True if all went out."""
        if not data:
            return True  # the usual case after ':q': no Timeout to make
        try:
            with gevent.Timeout(linger, _LingerOver):
                view = memoryview(data)
                while view:
                    view = view[self.sock.send(view) :]
                view.release()
        except (OSError, _LingerOver):
            return False
        return True


def _unread_bytes(sock: GeventSocket) -> int:
    """Bytes received on ``sock`` and not yet read (FIONREAD); -1 if the kernel will not say."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])
    except OSError:
        return -1
