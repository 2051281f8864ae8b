"""What interrupts a connection's greenlet: its idle alarm, a graceful shutdown, an overflowing send queue, and
the private timeouts of its framing window, lingering close and TLS handshake. Each is an ``Exception`` of ours (a
``gevent.Timeout`` raises one of these, never itself), mapped to how the connection closes in
:data:`geventchat.server.connection._ENDINGS`.
"""

from __future__ import annotations

__all__ = ["IdleAlarm", "ShutdownRequested", "TooSlow"]


class IdleAlarm(Exception):
    """Raised in a connection's greenlet (and only there) by its ``gevent.Timeout``: the idle deadline may have
    passed. Whoever catches it asks :meth:`Connection._check_deadline`, which re-arms for the time left if messages
    moved the deadline meanwhile, or raises :class:`~geventchat._net.IdleExpired`."""


class ShutdownRequested(Exception):
    """Thrown into a connection's greenlet when the server begins a graceful shutdown, and only while it waits for
    input (see :meth:`Connection.request_shutdown`): sends and closes never see it, so no reply is cut short."""


class TooSlow(Exception):
    """Thrown into a member's greenlet when its send queue overflowed, while it waits for input (as
    :class:`ShutdownRequested`) or is blocked writing its own replies: it says ``bye: too slow`` after whole lines
    only (none if cut in the middle of its own reply) and closes."""


class _LingerOver(Exception):
    pass


class _WindowOver(Exception):
    pass


class _TLSHandshakeExpired(Exception):
    """The handshake timeout passed before the TLS handshake finished (no ``bye:`` can be sent in clear)."""
