"""geventchat: a greenlet-per-client TCP chat/echo server on gevent, its client, and a sans-IO protocol core.

The public API, in the order most people need it::

    from geventchat import ChatServer, ServerConfig      # run a server
    from geventchat import ChatClient                    # talk to one
    from geventchat import ServerConversation, ClientConversation  # the sans-IO core, for your own shell

Importing this package does not monkey-patch anything.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .client import (
    ChatClient,
    ChatClientError,
    ClosedByServer,
    ConnectionFailed,
    ConnectionRefused,
    ConnectionReset,
    ConnectTimeout,
    ReplyTimeout,
    ServerProtocolError,
    WrongReply,
)
from .config import Framing, ProtocolConfig, ServerConfig
from .protocol import ClientConversation, CloseReason, ServerConversation
from .server import ChatServer

__all__ = [
    "ChatClient",
    "ChatClientError",
    "ChatServer",
    "ClientConversation",
    "CloseReason",
    "ClosedByServer",
    "ConnectTimeout",
    "ConnectionFailed",
    "ConnectionRefused",
    "ConnectionReset",
    "Framing",
    "ProtocolConfig",
    "ReplyTimeout",
    "ServerConfig",
    "ServerConversation",
    "ServerProtocolError",
    "WrongReply",
    "__version__",
]
