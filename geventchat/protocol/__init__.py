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

Import every name from here; the modules split it by concern: :mod:`.server_side` and :mod:`.client_side` (the two
conversations), :mod:`.buffer` (the receive buffer both parse lines with), :mod:`.events`, :mod:`.errors`, and
:mod:`.text` (wire strings, timeout parsing, peer text made safe to log).
"""

from .buffer import ReceiveBuffer
from .client_side import ClientConversation
from .errors import InvalidTimeout, LineTooLong, LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import (
    Bye,
    ClientEvent,
    CloseReason,
    ConnectionClosed,
    ErrorNotice,
    FramingChosen,
    Greeting,
    MessageReceived,
    MessageRejected,
    QuitReceived,
    Reply,
    ServerEvent,
    TimeoutNegotiated,
    TimeoutRejected,
)
from .server_side import ServerConversation
from .text import (
    BYE_PREFIX,
    ERROR_PREFIX,
    NEWLINE,
    QUIT,
    describe_event,
    escape_controls,
    format_peer,
    format_seconds,
    parse_timeout,
    quote_peer_text,
)

__all__ = [
    "BYE_PREFIX",
    "ERROR_PREFIX",
    "NEWLINE",
    "QUIT",
    "Bye",
    "ClientConversation",
    "ClientEvent",
    "CloseReason",
    "ConnectionClosed",
    "ErrorNotice",
    "FramingChosen",
    "Greeting",
    "InvalidTimeout",
    "LineTooLong",
    "LocalProtocolError",
    "MessageReceived",
    "MessageRejected",
    "ProtocolError",
    "QuitReceived",
    "ReceiveBuffer",
    "RemoteProtocolError",
    "Reply",
    "ServerConversation",
    "ServerEvent",
    "TimeoutNegotiated",
    "TimeoutRejected",
    "describe_event",
    "escape_controls",
    "format_peer",
    "format_seconds",
    "parse_timeout",
    "quote_peer_text",
]
