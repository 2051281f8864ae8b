"""Failure causes: the labels that become rows of Locust's failure table.

Locust groups failures by (request type, name, error text), so the text must name the *cause* and nothing that
varies per request (ports, counters, addresses). :func:`cause_of` turns a :class:`~geventchat.client.ChatClientError`
into such a label; :class:`StepFailed` carries it to Locust's ``request`` event.
"""

from __future__ import annotations

from geventchat.client import ChatClientError, ClosedByServer, ConnectionFailed, ConnectionRefused, ConnectTimeout

__all__ = ["BYE_TOO_EARLY", "BYE_TOO_LATE", "CLOSED_WITHOUT_BYE", "StepFailed", "cause_of"]

#: TimeoutUser: the server closed before the negotiated idle timeout ran out.
BYE_TOO_EARLY = "bye too early"
#: TimeoutUser: no ``bye:`` within the negotiated timeout plus the tolerance.
BYE_TOO_LATE = "bye too late"
#: The server closed without saying ``bye:`` (where one was due).
CLOSED_WITHOUT_BYE = "closed by server: no bye"


class StepFailed(Exception):
    """What the Locust users report as a request's ``exception``: ``repr()`` and ``str()`` are the cause label
    alone, so every occurrence of one cause lands in one failure row. ``detail`` keeps the full message."""

    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(cause)
        self.cause = cause
        self.detail = detail or cause

    def __repr__(self) -> str:
        return self.cause

    def __str__(self) -> str:
        return self.cause


def cause_of(error: ChatClientError) -> str:
    """The failure-table label for a client error.

    ``connection refused``, ``connect timeout``, ``reset by peer``, ``closed by server: <bye reason>`` (or
    ``closed by server: no bye``), ``reply timeout``, ``wrong reply``, ``protocol error``; other connection
    failures keep the system's reason (``connect failed: Cannot assign requested address``).
    """
    if isinstance(error, ClosedByServer):
        return f"{error.cause}: {error.reason}" if error.reason else CLOSED_WITHOUT_BYE
    if isinstance(error, ConnectionFailed) and not isinstance(error, ConnectionRefused | ConnectTimeout):
        # The message ends with the system's reason ("cannot connect to h:p: <reason>"); the address is constant
        # per run but the reason is what tells apart port exhaustion from an unreachable network.
        reason = str(error).rpartition(": ")[2]
        return f"{error.cause}: {reason}" if reason else error.cause
    return error.cause
