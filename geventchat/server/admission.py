"""Admission: whether the server takes a client it accepted, and how it turns one away.

In the order :meth:`ChatServer._handle <geventchat.server.ChatServer>` asks: room under the connection limit
(else ``bye: server full``), the load balancer's PROXY protocol header (``--proxy-protocol``), room under the
per-address limit (else ``bye: too many connections from your address``). A turned-away client gets its ``bye:``
(under TLS after a handshake) and a lingering close, so it can read the line before the socket goes.
"""

from __future__ import annotations

import logging
import socket
import ssl

import gevent
from gevent.socket import socket as GeventSocket

from .._net import linger_close
from ..config import ServerConfig
from ..limits import AddressLimiter
from ..protocol import CloseReason, ServerConversation, format_peer
from ..proxy_protocol import InvalidProxyHeader, ProxyHeaderReader
from ..stats import INVALID_PROXY_HEADER, RESET, ServerStats

__all__ = ["Admission"]

# The gevent shell logs under one name, whichever of its modules speaks (operators filter on it).
log = logging.getLogger("geventchat.server")

# Clients rejected with 'bye: server full' that may linger at once; past this they are closed without the
# lingering close, so a connection flood cannot pin an unbounded number of sockets.
_MAX_LINGERING_REJECTS = 256


class _ProxyHeaderLate(Exception):
    pass


class _RejectHandshakeLate(Exception):
    """A rejected TLS client did not finish its handshake within the linger: it gets no bye."""


class Admission:
    """The connection limit, the per-address limit and the PROXY header for one server, and its rejects.

    ``connected`` arguments are the server's connections being served now (without those still sending their
    PROXY header, which this class counts itself).
    """

    def __init__(self, config: ServerConfig, stats: ServerStats, tls: ssl.SSLContext | None) -> None:
        self._config = config
        self._stats = stats
        self._tls = tls
        #: Most clients served at once (``config.connection_limit``).
        self.limit = config.connection_limit
        #: Connections per client address (``--max-per-ip``), or None without that limit.
        self.per_ip = AddressLimiter(config.max_per_ip) if config.max_per_ip is not None else None
        #: Connections still sending their PROXY header: they count toward the limit.
        self.awaiting_header = 0
        #: Rejected clients in their lingering close now.
        self.lingering_rejects = 0
        self._rejecting_full = 0  # clients rejected in the current 'server full' episode (logged once)

    def has_room(self, sock: GeventSocket, address: tuple[str, int], connected: int) -> bool:
        """True if one more client fits under the connection limit; else tell it ``bye: server full`` (and close)
        and return False."""
        if connected + self.awaiting_header >= self.limit:
            self._stats.rejected_full += 1
            if not self._rejecting_full:
                # Once per episode: a flood must not turn into a log flood.
                log.warning("connection limit (%d) reached; rejecting new clients with 'bye: server full'", self.limit)
            self._rejecting_full += 1
            self.reject(sock, address, CloseReason.SERVER_FULL, connected)
            return False
        if self._rejecting_full:
            log.warning("accepting clients again after rejecting %d (server full)", self._rejecting_full)
            self._rejecting_full = 0
        return True

    def acquire(self, sock: GeventSocket, address: tuple[str, int], connected: int) -> str | None:
        """Count the client under its address and return the address's key for :meth:`release`; or, if its
        address is at the per-address limit, tell it so (and close) and return None."""
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.per_ip is not None and not self.per_ip.acquire(host):
            self.reject(sock, address, CloseReason.TOO_MANY_FROM_ADDRESS, connected)
            return None
        return host

    def release(self, host: str) -> None:
        """The client :meth:`acquire` counted under ``host`` has gone."""
        if self.per_ip is not None:
            self.per_ip.release(host)

    def read_proxy_header(self, sock: GeventSocket, address: tuple[str, int], timeout: float) -> tuple[str, int] | None:
        """Read the load balancer's PROXY header within ``timeout`` seconds and return the client address it names
        (the connection's own for a LOCAL or UNKNOWN header, as health checks send). ``None``, logged and counted,
        if there is none.

        Byte-exact: it peeks, and consumes only the header's bytes, so what follows (the client's first line, or
        its TLS ClientHello) stays in the socket for the conversation.
        """
        self.awaiting_header += 1
        try:
            with gevent.Timeout(timeout, _ProxyHeaderLate):
                return _read_proxy_header(sock, address)
        except OSError as exc:
            self._stats.count_close(RESET)
            log.debug("%s: connection error (peer's side): %s", format_peer(address), exc.strerror or exc)
            return None
        except _ProxyHeaderLate:
            reason = f"no complete header within {timeout:g}s"
        except InvalidProxyHeader as exc:
            reason = exc.reason
        finally:
            self.awaiting_header -= 1
        log.warning(
            "%s: closed: invalid PROXY protocol header (the load balancer's side: does it send one, "
            "e.g. HAProxy 'send-proxy'?): %s",
            format_peer(address),
            reason,
        )
        self._stats.count_close(INVALID_PROXY_HEADER)
        return None

    def reject(self, sock: GeventSocket, address: tuple[str, int], reason: CloseReason, connected: int) -> None:
        """Tell a client we will not serve it (``bye: <reason>`` instead of the greeting), then close."""
        self._stats.count_close(reason.value)
        log.debug("%s rejected: %s (%d connections)", format_peer(address), reason.value, connected)
        if self.lingering_rejects >= _MAX_LINGERING_REJECTS and self._tls is not None:
            return  # a TLS bye needs a handshake: past the cap, close at once
        self.lingering_rejects += 1
        try:
            if self._tls is not None:
                sock = self._tls_for_bye(sock, self._tls)
            self._say_bye(sock, reason)
        except (OSError, _RejectHandshakeLate):
            return  # the peer's side (or too slow): no bye, the socket is closed below or by the acceptor
        finally:
            self.lingering_rejects -= 1
            if self._tls is not None:
                sock.close()

    def _tls_for_bye(self, sock: GeventSocket, context: ssl.SSLContext) -> GeventSocket:
        """Our side of a TLS handshake within the linger, so the bye can be sent encrypted. Raises
        :class:`OSError` or :class:`_RejectHandshakeLate` (having closed ``sock``) if it fails."""
        try:
            with gevent.Timeout(self._config.linger, _RejectHandshakeLate):
                sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                sock.do_handshake()
        except (OSError, _RejectHandshakeLate):
            sock.close()
            raise
        return sock

    def _say_bye(self, sock: GeventSocket, reason: CloseReason) -> None:
        bye = ServerConversation.reject(reason)
        if sock.send(bye) == len(bye):
            self._stats.notices += 1
            self._stats.bytes_out += len(bye)
        if self.lingering_rejects <= _MAX_LINGERING_REJECTS:
            linger_close(sock, self._config.linger)


def _read_proxy_header(sock: GeventSocket, address: tuple[str, int]) -> tuple[str, int]:
    """Peek at ``sock`` until a whole PROXY header is there and consume exactly its bytes. Raises
    :class:`InvalidProxyHeader` (having consumed the refused bytes) or :class:`OSError`."""
    reader = ProxyHeaderReader()
    while True:  # bounded by the caller's Timeout, and each turn consumes what it peeked
        peeked = sock.recv(reader.max_length, socket.MSG_PEEK)
        try:
            header = reader.receive_data(peeked)
        except InvalidProxyHeader:
            sock.recv(len(peeked))  # take the refused bytes: closing then sends a FIN, not a reset
            raise
        # Until the header is complete every peeked byte is part of it; then only up to its end.
        used = len(peeked) - len(reader.leftover) if header is not None else len(peeked)
        while used > 0:  # bounded: used shrinks with every chunk, and an empty chunk raises
            chunk = sock.recv(used)  # already buffered: returns at once
            if not chunk:
                raise InvalidProxyHeader("connection closed inside the PROXY protocol header")
            used -= len(chunk)
        if header is not None:
            return header.source or address
