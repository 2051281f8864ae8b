"""Errors of the protocol core, named for whose fault they are (as h11's)."""

from __future__ import annotations

__all__ = ["InvalidTimeout", "LineTooLong", "LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base of the errors this package raises."""


class LocalProtocolError(ProtocolError):
    """*We* misused the protocol: sent a message with a newline in it, used a closed conversation, ..."""


class RemoteProtocolError(ProtocolError):
    """The *peer* broke the protocol in a way that cannot be answered with a notice."""


class LineTooLong(RemoteProtocolError):
    """The peer sent a line, or the start of one, longer than a :class:`~geventchat.protocol.buffer.ReceiveBuffer`
    may hold. ``limit`` is that cap in bytes (what a line may hold before its ``\\n``); ``sender`` names the peer
    in the message."""

    def __init__(self, limit: int, sender: str = "peer") -> None:
        self.limit = limit
        super().__init__(f"{sender} sent a line longer than {limit} bytes")


class InvalidTimeout(ValueError):
    """A requested idle timeout is not a positive decimal number of seconds. ``str()`` says why."""
