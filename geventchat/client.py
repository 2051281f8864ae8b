"""A geventchat client library: gevent sockets around :class:`~geventchat.protocol.ClientConversation`.

The command-line client, the tests and the Locust users all use it. It cooperates with gevent without needing
monkey-patching (it uses ``gevent.socket`` directly), so it runs unchanged inside Locust's patched processes.

Every failure is a :class:`ChatClientError` subclass whose :attr:`~ChatClientError.cause` names what happened, in
words a load-test report can group by: ``connection refused``, ``connect timeout``, ``reset by peer``,
``closed by server``, ``reply timeout``, ``wrong reply``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import ssl
import sys
import time
from collections import deque
from types import TracebackType
from typing import Any

import gevent
from gevent.socket import socket as GeventSocket

from .config import DEFAULT_PREFIX, Framing
from .protocol import (
    QUIT,
    Bye,
    ClientConversation,
    ClientEvent,
    ConnectionClosed,
    ErrorNotice,
    Greeting,
    RemoteProtocolError,
    Reply,
    escape_controls,
    quote_peer_text,
)

__all__ = [
    "CHAT_MARKERS",
    "SET_ASIDE_KEPT",
    "ChatClient",
    "ChatClientError",
    "ClosedByServer",
    "ConnectTimeout",
    "ConnectionFailed",
    "ConnectionRefused",
    "ConnectionReset",
    "ReplyTimeout",
    "ServerProtocolError",
    "TLSHandshakeFailed",
    "WrongReply",
]

# Raw framing has no delimiter: the timeout must reach an unframed server in a chunk of its own, and nothing
# the server sends tells us it was read. The original tutorial's server reads it with one recv(); a short pause
# keeps the first message out of that chunk.
_RAW_SETTLE = 0.05


#: How the chat lines a server sends unasked (or after an echo) begin (docs/protocol.md, rule 11): none of them is
#: the echo of a line we sent, though with an empty prefix an echo may look like one.
CHAT_MARKERS = ("ok: ", "info: ", "#", "@")
#: Chat lines (and ``error:`` notices) :attr:`ChatClient.set_aside` keeps at most; the oldest go first.
SET_ASIDE_KEPT = 1000

# Linux's IP_BIND_ADDRESS_NO_PORT (24); not every Python names it.
_IP_BIND_ADDRESS_NO_PORT: int | None = getattr(
    socket, "IP_BIND_ADDRESS_NO_PORT", 24 if sys.platform == "linux" else None
)


class ChatClientError(Exception):
    """Base of client failures. ``cause`` is a short stable label (used as the Locust failure row)."""

    cause = "client error"


class ConnectionFailed(ChatClientError):
    """The connection could not be set up (the server's side or the network's)."""

    cause = "connect failed"


class ConnectionRefused(ConnectionFailed):
    """Nothing listens at the address (the server is down or the address is wrong)."""

    cause = "connection refused"


class ConnectTimeout(ConnectionFailed):
    """No TCP handshake or no greeting within the connect timeout (the server is overloaded or unreachable)."""

    cause = "connect timeout"


class TLSHandshakeFailed(ConnectionFailed):
    """The TLS handshake failed: the certificate did not verify, or the server does not speak TLS."""

    cause = "tls handshake failed"


class ConnectionReset(ChatClientError):
    """The server's side reset the connection."""

    cause = "reset by peer"


class ClosedByServer(ChatClientError):
    """The server closed the connection: ``reason`` is its ``bye:`` reason, or ``None`` if it closed silently."""

    cause = "closed by server"

    def __init__(self, reason: str | None) -> None:
        self.reason = reason
        # The reason is the server's text: shown escaped, since it ends up on terminals and in logs.
        shown = escape_controls(reason) if reason else None
        super().__init__(f"server closed the connection: {shown}" if shown else "server closed the connection")


class ReplyTimeout(ChatClientError):
    """The server did not answer within the reply timeout."""

    cause = "reply timeout"


class WrongReply(ChatClientError):
    """The server answered, but not with the expected echo (the server's fault)."""

    cause = "wrong reply"


class ServerProtocolError(ChatClientError):
    """The server sent something the protocol does not allow (an over-long line, invalid UTF-8)."""

    cause = "protocol error"


class _Expired(Exception):
    """Private to this module so no other Timeout can be mistaken for ours."""


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, socket.SocketKind, int, tuple[Any, ...]]:
    """``(family, type, proto, address)`` for ``host``. An IP literal needs no lookup: under gevent's monkey-patching
    ``getaddrinfo`` goes through a thread pool and costs ~0.3 ms even for ``127.0.0.1``, which would dominate the
    connect time a load test measures."""
    try:
        ip = ipaddress.ip_address(host) if "%" not in host else None  # scoped IPv6 needs getaddrinfo's scope id
    except ValueError:
        ip = None
    if ip is not None:
        if ip.version == 6:
            return socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, (host, port, 0, 0)
        return socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, (host, port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectionFailed(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _canon, address = infos[0]
    return family, kind, proto, address


class ChatClient:
    """One connection to a geventchat server.

    Use :meth:`connect` (it reads the greeting and negotiates the idle timeout), then :meth:`request` for a
    message and its echo, or :meth:`send` / :meth:`receive` to pipeline. :meth:`quit` ends the session politely.
    Usable as a context manager (closes on exit).

    Chat servers also send lines that answer nothing we are waiting for: room, private and info lines from others,
    the ``ok:`` or ``error:`` that follows an earlier command's echo. The calls that wait for an echo
    (:meth:`request`, :meth:`expect_reply`, :meth:`quit`) pass over those and keep them in :attr:`set_aside`;
    :meth:`receive` returns every event as it comes.
    """

    def __init__(self, sock: GeventSocket, conversation: ClientConversation, *, reply_timeout: float) -> None:
        self.sock = sock
        self.conversation = conversation
        #: Seconds to wait for each server event before :class:`ReplyTimeout`.
        self.reply_timeout = reply_timeout
        #: The server's greeting, once read.
        self.greeting: str | None = None
        self._events: deque[ClientEvent] = deque()
        self._closed_by_server: ClosedByServer | None = None
        #: Chat lines (:class:`Reply` starting with one of :data:`CHAT_MARKERS`) and :class:`ErrorNotice` events
        #: that arrived while a call waited for an echo, oldest first; the caller may read and clear it. At most
        #: :data:`SET_ASIDE_KEPT` (the oldest are dropped first, counted in :attr:`set_aside_dropped`).
        self.set_aside: deque[Reply | ErrorNotice] = deque(maxlen=SET_ASIDE_KEPT)
        #: Events dropped from :attr:`set_aside` because it was full.
        self.set_aside_dropped = 0

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        *,
        idle_timeout: float | None = None,
        connect_timeout: float = 5.0,
        reply_timeout: float = 5.0,
        framing: Framing = Framing.LINE,
        prefix: str = DEFAULT_PREFIX,
        source_address: tuple[str, int] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> ChatClient:
        """Connect, read the greeting, and (if ``idle_timeout`` is given) request that idle timeout.

        ``tls``: talk TLS with this context (:func:`geventchat.tls.client_context` builds one), verifying the
        server's certificate for ``host``.

        Raises :class:`ConnectionRefused`, :class:`ConnectTimeout` (no connection or no greeting in
        ``connect_timeout`` seconds), :class:`TLSHandshakeFailed`, :class:`ClosedByServer` (for example
        ``bye: server full``) or :class:`ConnectionReset`.
        """
        sock = cls.open_socket(host, port, connect_timeout=connect_timeout, source_address=source_address, tls=tls)
        client = cls(sock, ClientConversation(prefix, framing=framing), reply_timeout=reply_timeout)
        try:
            client.read_greeting(timeout=connect_timeout)
            if idle_timeout is not None:
                client.request_timeout(idle_timeout)
        except BaseException:
            client.close()
            raise
        return client

    @staticmethod
    def open_socket(
        host: str,
        port: int,
        *,
        connect_timeout: float = 5.0,
        source_address: tuple[str, int] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> GeventSocket:
        """A connected gevent socket with ``TCP_NODELAY`` (TLS-wrapped, handshake done, if ``tls`` is given).
        Raises :class:`ConnectionRefused`, :class:`ConnectTimeout` or :class:`TLSHandshakeFailed`; other network
        errors as :class:`ConnectionFailed`. ``tls`` must be a :mod:`gevent.ssl` context (else :class:`TypeError`),
        so that the handshake does not block other greenlets."""
        if tls is not None:
            from .tls import is_cooperative

            if not is_cooperative(tls):
                raise TypeError("tls must be a gevent.ssl context: build it with geventchat.tls.client_context()")
        family, kind, proto, address = _resolve(host, port)
        sock = GeventSocket(family, kind, proto)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if source_address is not None:
                if source_address[1] == 0 and _IP_BIND_ADDRESS_NO_PORT is not None:
                    # Pick the source port at connect(), per destination, not at bind() for any destination:
                    # otherwise one source address runs out of ports after ~28k connections in total.
                    with contextlib.suppress(OSError):  # an optimisation only
                        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind(source_address)
            sock.settimeout(connect_timeout)
            sock.connect(address)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
                sock.do_handshake()
            sock.settimeout(None)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, ssl.SSLError | ssl.CertificateError):
                raise TLSHandshakeFailed(f"TLS handshake with {host}:{port} failed: {exc}") from None
            if isinstance(exc, ConnectionRefusedError):
                raise ConnectionRefused(f"connection refused by {host}:{port}") from None
            if isinstance(exc, TimeoutError | socket.timeout):
                raise ConnectTimeout(f"no connection to {host}:{port} within {connect_timeout:g}s") from None
            if isinstance(exc, OSError):
                raise ConnectionFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
            raise
        return sock

    # -- conversation steps

    def read_greeting(self, timeout: float | None = None) -> str:
        """Wait for the greeting. Raises :class:`ClosedByServer` if the server says ``bye:`` instead."""
        try:
            event = self.receive(timeout)
        except ReplyTimeout:
            raise ConnectTimeout(f"no greeting within {timeout or self.reply_timeout:g}s") from None
        if isinstance(event, Greeting):
            self.greeting = event.text
            return event.text
        if isinstance(event, Bye):
            self._closed_by_server = ClosedByServer(event.reason)
            raise self._closed_by_server
        raise WrongReply(f"expected a greeting, got {event!r}")

    def request_timeout(self, seconds: float) -> None:
        """Ask for an idle timeout of ``seconds`` (the server clamps it to its bounds; it sends nothing back)."""
        self._sendall(self.conversation.send_timeout(seconds))
        if self.conversation.framing is Framing.RAW:
            gevent.sleep(_RAW_SETTLE)

    def send(self, message: str | bytes) -> None:
        """Send one message without waiting for its reply."""
        self._sendall(self.conversation.send_message(message))

    def request(self, message: str, *, check: bool = True) -> Reply:
        """Send ``message`` and return the server's reply (``.message`` is the echo, ``.text`` the whole line).

        Raises :class:`WrongReply` if ``check`` and the echo differs (or the server sent ``error:``),
        :class:`ReplyTimeout`, :class:`ClosedByServer`, :class:`ConnectionReset`.
        """
        self.send(message)
        return self.expect_reply(message if check else None)

    def expect_reply(self, message: str | None = None) -> Reply:
        """Wait for the next echo reply; if ``message`` is given it must be its echo (else :class:`WrongReply`).

        Chat lines and ``error:`` notices that come first are put in :attr:`set_aside` (in line framing): they
        belong to earlier lines (a command's answer follows its echo) or to nobody we asked. The one ``error:`` that
        replaces an echo, for a line that was not valid UTF-8, cannot come from text sent with :meth:`send`; if no
        echo comes within the reply timeout (for the whole wait) after an ``error:`` was set aside,
        :class:`WrongReply` names it. With an empty prefix an echo that looks like a chat line is recognised only
        when ``message`` is given.

        Raises :class:`WrongReply`, :class:`ReplyTimeout`, :class:`ClosedByServer`, :class:`ConnectionReset`.
        """
        refused: ErrorNotice | None = None
        chat = self.conversation.framing is Framing.LINE
        deadline = time.monotonic() + self.reply_timeout  # for the echo, however many chat lines come first
        while True:  # bounded by the deadline: each pass waits at most what is left of it
            try:
                event = self.receive(max(deadline - time.monotonic(), 0.0))
            except ReplyTimeout:
                if refused is None:
                    raise
                raise WrongReply(f"no echo; the server answered error: {refused.reason}") from None
            if isinstance(event, Reply):
                if chat and self._is_chat_line(event, message):
                    self._set_aside(event)
                    continue
                if message is not None and event.message != message:
                    raise WrongReply(
                        f"expected the echo of {quote_peer_text(message)}, got {quote_peer_text(event.text)}"
                    )
                return event
            if isinstance(event, ErrorNotice) and chat:
                refused = event
                self._set_aside(event)
                continue
            if isinstance(event, ErrorNotice):
                raise WrongReply(f"server answered error: {event.reason}")
            raise WrongReply(f"expected a reply, got {event!r}")

    def _is_chat_line(self, reply: Reply, message: str | None) -> bool:
        """True for a chat line (room, private, info, a command's ``ok:``), not an echo: a line with the prefix is
        always an echo; with an empty prefix, the exact echo of ``message`` is one."""
        prefix = self.conversation.prefix
        if prefix:
            return not reply.text.startswith(prefix) and reply.text.startswith(CHAT_MARKERS)
        return reply.text != message and reply.text.startswith(CHAT_MARKERS)

    def _set_aside(self, event: Reply | ErrorNotice) -> None:
        if len(self.set_aside) == SET_ASIDE_KEPT:
            self.set_aside_dropped += 1
        self.set_aside.append(event)

    def quit(self, *, wait_for_close: bool = False) -> Reply:
        """Send ``:q`` and return its reply. The connection is closed after.

        The reply ends the conversation: by default this does not wait for the server to close, since a server may
        never close (the original tutorial's forks a process per client and its parent keeps a copy of the
        socket, so no end of input ever arrives). A ``bye:`` that has already arrived after the reply still
        raises :class:`ClosedByServer`. ``wait_for_close``: also wait (up to the reply timeout) for the server to
        close, as a load test's ``quit`` step that times the close does; raises :class:`ReplyTimeout` if it does
        not, :class:`ClosedByServer` if it says ``bye:`` first.

        Chat lines before the reply, or after it while waiting for the close, go to :attr:`set_aside`.

        Raises :class:`WrongReply` (the reply is not the echo of ``:q``), :class:`ReplyTimeout`,
        :class:`ClosedByServer`, :class:`ConnectionReset`.
        """
        try:
            self.send_quit()
            reply = self.expect_reply(QUIT)
            if wait_for_close:
                self._await_close()
            else:
                self.raise_pending_bye()
            return reply
        finally:
            self.close()

    def _await_close(self) -> None:
        """After the reply to ``:q``: wait up to the reply timeout for the close, setting lines aside meanwhile.
        Raises :class:`ClosedByServer` for a ``bye:``, :class:`ReplyTimeout` if the server does not close."""
        deadline = time.monotonic() + self.reply_timeout
        while True:  # bounded by the deadline: each pass waits at most what is left of it
            try:
                event = self.receive(max(deadline - time.monotonic(), 0.0))
            except ClosedByServer as closed:
                if closed.reason is not None:
                    raise
                return
            if isinstance(event, Reply | ErrorNotice):
                self._set_aside(event)

    def send_quit(self) -> None:
        """Send ``:q`` without waiting for its reply."""
        self._sendall(self.conversation.send_quit())

    def raise_pending_bye(self) -> None:
        """Raise :class:`ClosedByServer` if a ``bye:`` line has already arrived, in events not yet returned or in
        bytes the kernel holds; never waits for more. For after the reply to ``:q``, when the conversation is over:
        a reset or a malformed line is then no longer worth reporting, so neither raises."""
        self._raise_pending_bye(wait=0)

    @property
    def has_unread(self) -> bool:
        """True if something the server sent is waiting: a received event not yet returned, or part of a line."""
        return bool(self._events) or self.conversation.pending_bytes > 0

    def feed(self, data: bytes) -> None:
        """Hand the conversation bytes the caller read from :attr:`sock` itself (``b""`` for end of input); their
        events come out of the next :meth:`receive` / :meth:`expect_reply`. For callers with their own read fast
        path, such as the Locust users. Raises :class:`ServerProtocolError`."""
        try:
            self._events.extend(self.conversation.receive_data(data))
        except RemoteProtocolError as exc:
            raise ServerProtocolError(str(exc)) from None

    def receive(self, timeout: float | None = None) -> ClientEvent:
        """The next event from the server (a :class:`Greeting`, :class:`Reply` or :class:`ErrorNotice`).

        A ``bye:`` line or the end of the connection raises :class:`ClosedByServer` instead; no event within
        ``timeout`` (default: the reply timeout) raises :class:`ReplyTimeout`.
        """
        events = self._events
        if not events:
            self._fill(self.reply_timeout if timeout is None else timeout)
        event = events.popleft()
        if isinstance(event, Bye):
            self._closed_by_server = ClosedByServer(event.reason)
            raise self._closed_by_server
        if isinstance(event, ConnectionClosed):
            events.appendleft(event)  # stays closed for every later call
            raise self._closed_by_server or ClosedByServer(None)
        return event

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.sock.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # -- I/O

    def _fill(self, timeout: float) -> None:
        conversation = self.conversation
        events = self._events
        expired = _Expired()
        try:
            with gevent.Timeout(timeout, expired):
                while not events:
                    if conversation.closed:
                        raise ClosedByServer(None)
                    try:
                        data = self.sock.recv(65536)
                    except ConnectionResetError:
                        raise ConnectionReset("connection reset by the server") from None
                    except OSError as exc:
                        if exc.errno == errno.EBADF:
                            raise ClosedByServer(None) from None
                        raise ConnectionReset(f"connection broken: {exc.strerror or exc}") from None
                    self.feed(data)
        except _Expired as exc:
            if exc is not expired:
                raise
            raise ReplyTimeout(f"no answer from the server within {timeout:g}s") from None

    def _sendall(self, data: bytes) -> None:
        expired = _Expired()
        try:
            with gevent.Timeout(self.reply_timeout, expired):
                self.sock.sendall(data)
        except _Expired as exc:
            if exc is not expired:
                raise
            raise ReplyTimeout(f"the server did not read our data within {self.reply_timeout:g}s") from None
        except OSError as exc:
            # The server may have said why it closed (bye: idle timeout, ...) before the reset: surface that.
            self._raise_pending_bye()
            raise ConnectionReset(f"connection broken while sending: {exc.strerror or exc}") from None

    def _raise_pending_bye(self, wait: float = 0.05) -> None:
        # A zero wait still reads what the kernel already holds: gevent tries recv() before it waits.
        with contextlib.suppress(ChatClientError):
            self._fill(wait)
        for event in self._events:
            if isinstance(event, Bye):
                raise ClosedByServer(event.reason) from None
