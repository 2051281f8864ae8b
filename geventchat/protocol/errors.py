"""Errors of the protocol core, named for whose fault they are (as h11's)."""

from __future__ import annotations

__all__ = ["InvalidTimeout", "LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base of the errors this package raises."""


class LocalProtocolError(ProtocolError):
    """*We* misused the protocol: sent a message with a newline in it, used a closed conversation, ..."""


class RemoteProtocolError(ProtocolError):
    """The *peer* broke the protocol in a way that cannot be answered with a notice."""


class InvalidTimeout(ValueError):
    """A requested idle timeout is not a positive decimal number of seconds. ``str()`` says why."""
