"""The geventchat protocol as a sans-IO state machine: bytes in, events out; events in, bytes out.

No sockets, no gevent, no clock. The server and client shells (and the Locust users, and the comparison backends)
feed whatever ``recv()`` returned into :meth:`ServerConversation.receive_data` /
:meth:`ClientConversation.receive_data`, act on the events that come back, and write out what the conversation
queued. TCP has no message boundaries, so nothing here assumes one chunk is one message (except in raw framing,
where that *is* the protocol, as in the original tutorial).

The conversation, in line framing (``docs/protocol.md`` has the whole of it):

1. server: greeting line
2. client: its idle timeout in seconds (``30``, ``0.5``); clamped, or ``error: ...`` and the default applies
3. client: any line ``M``; server: ``<prefix>M``
4. client: ``:q``; server: ``<prefix>:q``, then closes

Server notices are lines starting ``error: `` (the peer erred; the conversation goes on) or ``bye: `` (the server
is closing this connection, and says why).
"""

from __future__ import annotations

import enum
import functools
import math
import re
from dataclasses import dataclass

from .config import Framing, ProtocolConfig

__all__ = [
    "NEWLINE",
    "QUIT",
    "Bye",
    "ClientConversation",
    "CloseReason",
    "ConnectionClosed",
    "ErrorNotice",
    "FramingChosen",
    "Greeting",
    "InvalidTimeout",
    "LocalProtocolError",
    "MessageReceived",
    "MessageRejected",
    "ProtocolError",
    "QuitReceived",
    "RemoteProtocolError",
    "Reply",
    "ServerConversation",
    "TimeoutNegotiated",
    "TimeoutRejected",
    "describe_event",
    "escape_controls",
    "format_peer",
    "parse_timeout",
]

NEWLINE = b"\n"
#: The message that ends a session.
QUIT = ":q"
_QUIT_BYTES = QUIT.encode()
ERROR_PREFIX = "error: "
BYE_PREFIX = "bye: "
#: Longest piece of peer text quoted back in a notice.
_QUOTE_LIMIT = 40


# --------------------------------------------------------------------------------------------------- errors


class ProtocolError(Exception):
    """Base of the errors this module raises."""


class LocalProtocolError(ProtocolError):
    """*We* misused the protocol: sent a message with a newline in it, used a closed conversation, ..."""


class RemoteProtocolError(ProtocolError):
    """The *peer* broke the protocol in a way that cannot be answered with a notice."""


class InvalidTimeout(ValueError):
    """A requested idle timeout is not a positive decimal number of seconds. ``str()`` says why."""


# --------------------------------------------------------------------------------------------------- events


class CloseReason(enum.Enum):
    """Why a conversation ended."""

    #: The client sent ``:q``.
    QUIT = "quit"
    #: The client closed its side (end of input) or the connection broke.
    PEER_CLOSED = "peer closed"
    #: No complete message within the idle timeout.
    IDLE_TIMEOUT = "idle timeout"
    #: A line exceeded the length limit.
    LINE_TOO_LONG = "line too long"
    #: The server is shutting down.
    SHUTDOWN = "server shutting down"
    #: The server was at its connection limit when this client arrived.
    SERVER_FULL = "server full"
    #: The client's address already had as many connections as the server allows one address.
    TOO_MANY_FROM_ADDRESS = "too many connections from your address"
    #: The client did not send its idle-timeout line within the handshake timeout.
    HANDSHAKE_TIMEOUT = "handshake timeout"


@dataclass(frozen=True, slots=True)
class FramingChosen:
    """The server settled how this connection delimits messages (``auto`` framing decides once)."""

    framing: Framing


@dataclass(frozen=True, slots=True)
class TimeoutNegotiated:
    """The client asked for an idle timeout; ``seconds`` is what applies (``requested`` clamped to the bounds)."""

    seconds: float
    requested: float


@dataclass(frozen=True, slots=True)
class TimeoutRejected:
    """The client's timeout request was invalid; the default applies. An ``error:`` line was queued (line mode)."""

    reason: str
    seconds: float


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A complete message (without its line terminator). Its reply has been queued."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageRejected:
    """A complete line that could not be accepted (invalid UTF-8). An ``error:`` line was queued."""

    reason: str


@dataclass(frozen=True, slots=True)
class QuitReceived:
    """The client sent ``:q``. Its reply was queued and the conversation is closed."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The conversation is over; the shell should send what is queued, then close. Always the last event."""

    reason: CloseReason
    #: The ``bye:`` text that was queued, if any (raw framing and peer-initiated closes send none).
    bye: str | None = None


# Client-side events: what the server said.


@dataclass(frozen=True, slots=True)
class Greeting:
    """The server's greeting."""

    text: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The server's reply to one message; ``message`` is the text after the prefix (the echo)."""

    text: str
    message: str


@dataclass(frozen=True, slots=True)
class ErrorNotice:
    """``error: <reason>``: the server rejected something we sent; the conversation goes on."""

    reason: str


@dataclass(frozen=True, slots=True)
class Bye:
    """``bye: <reason>``: the server is closing the connection."""

    reason: str


ServerEvent = (
    FramingChosen
    | TimeoutNegotiated
    | TimeoutRejected
    | MessageReceived
    | MessageRejected
    | QuitReceived
    | ConnectionClosed
)
ClientEvent = Greeting | Reply | ErrorNotice | Bye | ConnectionClosed


# --------------------------------------------------------------------------------------------------- helpers

# ASCII only: in a str pattern \d would also match other scripts' digits ('٣٠' would parse as 30) and \s other
# spaces; the protocol's timeout is a plain ASCII decimal. (The bytes pattern is ASCII by nature.)
_DECIMAL = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*", re.ASCII)
_LEADING_DECIMAL = re.compile(rb"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def escape_controls(text: str) -> str:
    """``text`` with every non-printable character (ANSI escapes, ``\r``, ...) escaped, so peer-controlled text
    printed on a terminal or in a log shows as what it is and is never interpreted."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def quote_peer_text(text: str | bytes, limit: int = _QUOTE_LIMIT) -> str:
    """Peer-controlled text made safe to print or log: quoted, control characters escaped, length capped."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return f"'{escape_controls(text[:limit])}'" + ("..." if len(text) > limit else "")


def format_peer(address: tuple[str, int] | tuple[str, int, int, int] | str) -> str:
    """A peer address for logs: ``host:port``, ``[v6]:port`` (unambiguous), or the text as given."""
    if isinstance(address, tuple):
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def describe_event(event: object) -> str:
    """An event for a debug log, with peer-supplied bytes escaped."""
    data = getattr(event, "data", None)
    if isinstance(data, bytes):
        return f"{type(event).__name__}({quote_peer_text(data)})"
    return repr(event)


def parse_timeout(text: str, minimum: float, maximum: float) -> tuple[float, float]:
    """Parse a timeout request. Returns ``(applied, requested)``: the request clamped to ``[minimum, maximum]``.

    Raises :class:`InvalidTimeout` unless ``text`` is a positive decimal number in ASCII digits (``30``, ``0.5``,
    ``.5``, with optional ASCII whitespace around it); exponents, signs, ``nan``, ``inf`` and digits of other
    scripts are refused.
    """
    match = _DECIMAL.fullmatch(text)
    if match is None:
        raise InvalidTimeout(f"timeout {quote_peer_text(text)} is not a positive decimal number of seconds")
    requested = float(match.group(1))
    if not (requested > 0 and math.isfinite(requested)):
        raise InvalidTimeout(f"timeout {quote_peer_text(text)} must be greater than 0")
    return min(max(requested, minimum), maximum), requested


@functools.lru_cache(maxsize=16)
def _encoded(text: str) -> bytes:
    """One shared encoding of a configured text, instead of a copy per connection."""
    return text.encode()


def format_seconds(seconds: float) -> str:
    """``30`` for whole seconds, ``0.5`` otherwise: how timeouts are written in notices."""
    return f"{seconds:g}"


# --------------------------------------------------------------------------------------------------- server


class _State(enum.Enum):
    HANDSHAKE = "handshake"  # waiting for the timeout line
    CHATTING = "chatting"
    CLOSED = "closed"


_CHATTING = _State.CHATTING
_LINE = Framing.LINE
_QUIT_LINE = _QUIT_BYTES + NEWLINE


class ServerConversation:
    """The server's side of one connection.

    Construct it on accept; the greeting is queued at once. Feed every received chunk to :meth:`receive_data`
    (``b""`` for end of input) and send :meth:`data_to_send` after each call. Call :meth:`close` when the shell
    decides to end the conversation (idle timeout, shutdown). After a :class:`ConnectionClosed` event, send what
    is queued and close the socket.

    Memory is bounded: at most ``max_line + 1`` bytes of an incomplete line are ever held.
    """

    __slots__ = (
        "_config",
        "_framing",
        "_max_line",
        "_out",
        "_partial",
        "_prefix",
        "_state",
        "close_reason",
        "idle_timeout",
        "messages_received",
        "notices_queued",
    )

    def __init__(self, config: ProtocolConfig) -> None:
        self._config = config
        self._framing = config.framing
        self._max_line = config.max_line
        self._prefix = _encoded(config.prefix)
        self._state = _State.HANDSHAKE
        self._partial = bytearray()
        #: The idle timeout in force, in seconds (the default until the client negotiates one).
        self.idle_timeout: float = config.default_timeout
        #: Why the conversation ended, once it has.
        self.close_reason: CloseReason | None = None
        #: Complete messages answered so far (for statistics); each queued exactly one reply.
        self.messages_received = 0
        #: ``error:`` and ``bye:`` lines queued so far (for statistics).
        self.notices_queued = 0
        greeting = config.greeting.encode()
        self._out: list[bytes] = [greeting if self._framing is Framing.RAW else greeting + NEWLINE]

    # -- state the shell asks about

    @property
    def framing(self) -> Framing:
        """The framing in force; :attr:`Framing.AUTO` until it has been decided."""
        return self._framing

    @property
    def closed(self) -> bool:
        """True once a :class:`ConnectionClosed` event has been produced."""
        return self._state is _State.CLOSED

    @property
    def awaiting_framing_decision(self) -> bool:
        """True in ``auto`` framing while bytes without a newline are pending: the shell should wait the detection
        window for more input, then call :meth:`settle_framing` if none came. End of input (``receive_data(b"")``)
        within the window settles it too: the pending chunk is answered in raw framing, then the conversation
        closes."""
        return self._framing is Framing.AUTO and bool(self._partial)

    @property
    def handshake_done(self) -> bool:
        """True once the client's first line (its idle-timeout request, valid or not) has been read."""
        return self._state is not _State.HANDSHAKE

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete message held (never more than ``max_line + 1``)."""
        return len(self._partial)

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call, as one buffer (``b""`` if nothing)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    # -- input

    def receive_data(self, data: bytes) -> list[ServerEvent]:
        """Feed bytes received from the client; ``b""`` means the client closed its side (in ``auto`` framing,
        a chunk still awaiting the framing decision is then answered as raw before the :class:`ConnectionClosed`).

        Returns the events they completed (often none). Replies and notices are queued for :meth:`data_to_send`.
        Raises :class:`LocalProtocolError` if the conversation is already closed.
        """
        state = self._state
        if (
            state is _CHATTING
            and self._framing is _LINE
            and data
            and data.find(NEWLINE) == len(data) - 1
            and len(data) <= self._max_line + 1
            and not self._partial
            and data.isascii()
            and data != _QUIT_LINE
            and not data.endswith(b"\r\n")
        ):
            # The common case in one step: one whole plain line, nothing pending. Same result as the general
            # path below (the reply is the prefix plus the line as received), with no split, slice or join.
            self._out.append(self._prefix + data)
            self.messages_received += 1
            return [MessageReceived(data[:-1])]
        if state is _State.CLOSED:
            raise LocalProtocolError("receive_data() called on a closed conversation")
        events: list[ServerEvent] = []
        if not data:
            if self.awaiting_framing_decision:
                # End of input is a decision too: no newline can follow, so this is an unframed client that sent
                # its one chunk and half-closed (``printf 30hi | socat``). Answer it, then close.
                events += self.settle_framing()
                if self._state is _State.CLOSED:  # the chunk was ':q'
                    return events
            self._finish(events, CloseReason.PEER_CLOSED, None)
            return events
        framing = self._framing
        if framing is Framing.LINE:
            self._receive_lines(data, events)
        elif framing is Framing.RAW:
            self._receive_chunk(data, events)
        elif NEWLINE in data:
            self._framing = Framing.LINE
            events.append(FramingChosen(Framing.LINE))
            if self._partial:
                data = bytes(self._partial) + data
                self._partial.clear()
            self._receive_lines(data, events)
        elif len(self._partial) + len(data) > self._max_line:
            # Too much for a line that has no newline yet: cannot be a line client within the limits, and
            # waiting longer would buffer past the cap. It is a raw client sending a big first chunk.
            self._partial += data
            events.extend(self.settle_framing())
        else:
            self._partial += data
        return events

    def settle_framing(self) -> list[ServerEvent]:
        """Decide ``auto`` framing for a client whose pending bytes carried no newline within the detection window:
        it is an unframed (raw) client. Returns the events of its first chunk. No-op in any other situation."""
        if not self.awaiting_framing_decision:
            return []
        self._framing = Framing.RAW
        first = bytes(self._partial)
        self._partial.clear()
        events: list[ServerEvent] = [FramingChosen(Framing.RAW)]
        self._receive_chunk(first, events)
        return events

    def close(self, reason: CloseReason) -> list[ServerEvent]:
        """End the conversation from the server's side (idle timeout, shutdown). Queues the ``bye:`` line (line
        framing) and returns the :class:`ConnectionClosed` event; returns ``[]`` if already closed."""
        if self._state is _State.CLOSED:
            return []
        if reason is CloseReason.IDLE_TIMEOUT:
            bye = f"idle timeout ({format_seconds(self.idle_timeout)}s)"
        else:
            bye = reason.value
        events: list[ServerEvent] = []
        self._finish(events, reason, bye)
        return events

    @staticmethod
    def reject(reason: CloseReason) -> bytes:
        """What a client turned away on accept gets instead of the greeting: ``bye: <reason>``."""
        return f"{BYE_PREFIX}{reason.value}\n".encode()

    # -- internals

    def _finish(self, events: list[ServerEvent], reason: CloseReason, bye: str | None) -> None:
        self._state = _State.CLOSED
        self.close_reason = reason
        self._partial.clear()
        if bye is not None and self._framing is not Framing.RAW:
            self._out.append(f"{BYE_PREFIX}{bye}\n".encode())
            self.notices_queued += 1
        else:
            bye = None
        events.append(ConnectionClosed(reason, bye))

    def _notice_error(self, reason: str) -> None:
        self._out.append(f"{ERROR_PREFIX}{reason}\n".encode())
        self.notices_queued += 1

    def _receive_lines(self, data: bytes, events: list[ServerEvent]) -> None:
        partial = self._partial
        limit = self._max_line + 1  # content plus a possible '\r' whose '\n' has not arrived yet
        if NEWLINE not in data:
            if len(partial) + len(data) > limit:
                self._line_too_long(events)
            else:
                partial += data
            return
        if partial:
            partial += data
            data = bytes(partial)
            partial.clear()
        lines = data.split(NEWLINE)
        tail = lines.pop()
        prefix = self._prefix
        out = self._out
        max_line = self._max_line
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if len(line) > max_line:
                self._line_too_long(events)
                return
            if self._state is not _State.CHATTING:
                self._handshake_line(line, events)
                if self._state is _State.CLOSED:
                    return
                continue
            if not line.isascii():
                try:
                    line.decode()
                except UnicodeDecodeError:
                    events.append(MessageRejected("message is not valid UTF-8"))
                    self._notice_error("message is not valid UTF-8")
                    continue
            events.append(MessageReceived(line))
            out.append(prefix + line + NEWLINE)
            self.messages_received += 1
            if line == _QUIT_BYTES:
                events.append(QuitReceived())
                self._finish(events, CloseReason.QUIT, None)
                return
        if tail:
            if len(tail) > limit:
                self._line_too_long(events)
            else:
                partial += tail

    def _line_too_long(self, events: list[ServerEvent]) -> None:
        self._finish(events, CloseReason.LINE_TOO_LONG, f"line too long (limit {self._max_line} bytes)")

    def _handshake_line(self, line: bytes, events: list[ServerEvent]) -> None:
        self._state = _State.CHATTING
        try:
            text = line.decode()
        except UnicodeDecodeError:
            events.append(TimeoutRejected("message is not valid UTF-8", self.idle_timeout))
            self._notice_error("message is not valid UTF-8")
            return
        if text == QUIT:
            # Quitting before negotiating is still quitting: answer it like any :q.
            events.append(MessageReceived(line))
            self._out.append(self._prefix + line + NEWLINE)
            self.messages_received += 1
            events.append(QuitReceived())
            self._finish(events, CloseReason.QUIT, None)
            return
        config = self._config
        try:
            seconds, requested = parse_timeout(text, config.min_timeout, config.max_timeout)
        except InvalidTimeout as exc:
            reason = f"{exc}; using the default of {format_seconds(config.default_timeout)}s"
            events.append(TimeoutRejected(reason, config.default_timeout))
            self._notice_error(reason)
            return
        self.idle_timeout = seconds
        events.append(TimeoutNegotiated(seconds, requested))

    def _receive_chunk(self, data: bytes, events: list[ServerEvent]) -> None:
        """Raw framing: one received chunk is one message; no notices, nothing added to replies."""
        if self._state is _State.HANDSHAKE:
            self._state = _State.CHATTING
            match = _LEADING_DECIMAL.match(data)
            requested = float(match.group(1)) if match else 0.0
            if requested > 0:
                config = self._config
                self.idle_timeout = min(max(requested, config.min_timeout), config.max_timeout)
                events.append(TimeoutNegotiated(self.idle_timeout, requested))
            else:
                events.append(TimeoutRejected("no leading positive number", self.idle_timeout))
            data = data[match.end() :] if match else data
            if not data:
                return
        events.append(MessageReceived(data))
        self._out.append(self._prefix + data)
        self.messages_received += 1
        if data == _QUIT_BYTES:
            events.append(QuitReceived())
            self._finish(events, CloseReason.QUIT, None)


# --------------------------------------------------------------------------------------------------- client


class ClientConversation:
    """The client's side of one connection: turns the server's bytes into :class:`Greeting`, :class:`Reply`,
    :class:`ErrorNotice`, :class:`Bye` and a final :class:`ConnectionClosed`; turns our requests into bytes.

    In line framing, a line is a :class:`Reply` if it starts with the expected prefix, else a notice if it starts
    with ``error: `` / ``bye: ``, else a reply from a server with another prefix. In raw framing every chunk after
    the greeting is a reply (the original tutorial's server sends no notices).
    """

    __slots__ = ("_framing", "_greeted", "_max_line", "_partial", "_prefix", "closed")

    def __init__(
        self, prefix: str = ProtocolConfig.prefix, *, framing: Framing = Framing.LINE, max_line: int = 65536
    ) -> None:
        if framing is Framing.AUTO:
            raise LocalProtocolError("a client must choose line or raw framing")
        self._prefix = prefix
        self._framing = framing
        self._max_line = max_line + len(prefix.encode()) + 1  # replies carry the prefix, and maybe a '\r'
        self._partial = bytearray()
        self._greeted = False
        #: True once the server's end of input has been seen.
        self.closed = False

    @property
    def framing(self) -> Framing:
        return self._framing

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete line held (line framing)."""
        return len(self._partial)

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Feed bytes from the server (``b""`` at end of input). Raises :class:`RemoteProtocolError` if the server
        sends a line over the limit or invalid UTF-8 in line framing."""
        if self.closed:
            raise LocalProtocolError("receive_data() called after the server closed")
        events: list[ClientEvent] = []
        if not data:
            self.closed = True
            if self._partial:
                # The server closed in the middle of a line: what we have is all there is.
                partial = bytes(self._partial)
                self._partial.clear()
                events.append(self._classify(self._decode(partial)))
            events.append(ConnectionClosed(CloseReason.PEER_CLOSED))
            return events
        if self._framing is Framing.RAW:
            text = data.decode("utf-8", "replace")
            if not self._greeted:
                self._greeted = True
                events.append(Greeting(text))
            else:
                events.append(Reply(text, text.removeprefix(self._prefix)))
            return events
        end = data.find(NEWLINE)
        if end < 0:
            if len(self._partial) + len(data) > self._max_line:
                raise RemoteProtocolError(f"server sent a line longer than {self._max_line} bytes")
            self._partial += data
            return events
        if end == len(data) - 1 and not self._partial:
            # The usual case, one whole line (a reply): no split, no list of lines, no tail to keep.
            if end > self._max_line:  # the same verdict as the general path below, whatever the chunking
                raise RemoteProtocolError(f"server sent a line longer than {self._max_line} bytes")
            line = data[:-2] if data[-2:-1] == b"\r" else data[:-1]
            events.append(self._classify(self._decode(line)))
            return events
        if self._partial:
            self._partial += data
            data = bytes(self._partial)
            self._partial.clear()
        lines = data.split(NEWLINE)
        tail = lines.pop()
        max_line = self._max_line
        for line in lines:
            # Checked for complete lines too, so the verdict does not depend on how TCP chunked the stream.
            if len(line) > max_line:
                raise RemoteProtocolError(f"server sent a line longer than {max_line} bytes")
            if line[-1:] == b"\r":
                line = line[:-1]
            events.append(self._classify(self._decode(line)))
        if len(tail) > self._max_line:
            raise RemoteProtocolError(f"server sent a line longer than {self._max_line} bytes")
        self._partial += tail
        return events

    def _decode(self, line: bytes) -> str:
        try:
            return line.decode()
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"server sent invalid UTF-8: {quote_peer_text(line)}") from None

    def _classify(self, text: str) -> ClientEvent:
        if not self._greeted:
            self._greeted = True
            if text.startswith(BYE_PREFIX):  # 'bye: server full' comes instead of the greeting
                return Bye(text[len(BYE_PREFIX) :])
            return Greeting(text)
        prefix = self._prefix
        if prefix and text.startswith(prefix):
            return Reply(text, text[len(prefix) :])
        if text.startswith(ERROR_PREFIX):
            return ErrorNotice(text[len(ERROR_PREFIX) :])
        if text.startswith(BYE_PREFIX):
            return Bye(text[len(BYE_PREFIX) :])
        return Reply(text, text)

    # -- output

    def send_timeout(self, seconds: float) -> bytes:
        """Bytes that request an idle timeout of ``seconds``."""
        if not (seconds > 0 and math.isfinite(seconds)):
            raise LocalProtocolError(f"timeout must be a positive number of seconds, not {seconds!r}")
        return self._frame(format_seconds(seconds).encode())

    def send_message(self, message: str | bytes) -> bytes:
        """Bytes that send one message. Raises :class:`LocalProtocolError` for a newline in line framing."""
        data = message.encode() if isinstance(message, str) else message
        if self._framing is Framing.LINE:
            if NEWLINE in data:
                raise LocalProtocolError("a message cannot contain a newline")
            return data + NEWLINE
        return data

    def send_quit(self) -> bytes:
        """Bytes that end the session (``:q``)."""
        return self._frame(_QUIT_BYTES)

    def _frame(self, data: bytes) -> bytes:
        return data + NEWLINE if self._framing is Framing.LINE else data
