"""What a conversation reports: the events each side produces, and why a conversation ended (:class:`CloseReason`).

Server-side events describe what the client did; client-side events what the server said. Every event is a frozen
value, compared by content, so tests can assert on lists of them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..config import Framing


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
    #: The client did not read the room and private lines for it fast enough: its send queue overflowed.
    TOO_SLOW = "too slow"


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
