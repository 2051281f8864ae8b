"""What a server counts: :class:`ServerStats`, and the fixed set of labels a connection's close is counted under.

The server owns one :class:`ServerStats` and updates it on its hot path; :mod:`geventchat.metrics` reads it at
scrape time. Both import this module and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .histogram import LatencyHistogram
from .protocol import CloseReason

__all__ = ["CLOSE_LABELS", "INTERNAL_ERROR", "INVALID_PROXY_HEADER", "RESET", "TLS_ERROR", "ServerStats"]

#: The connection broke (a reset, a broken pipe) before the conversation ended: the peer's side.
RESET = "reset"
#: The TLS layer failed: not TLS, a certificate the peer refused, a TLS alert.
TLS_ERROR = "tls error"
#: A bug of ours while serving the connection (logged with its traceback).
INTERNAL_ERROR = "internal error"
#: Behind a load balancer (``--proxy-protocol``): no valid PROXY header came first.
INVALID_PROXY_HEADER = "invalid proxy header"

#: Every reason :attr:`ServerStats.closed` counts, and so every value of the metrics' ``reason`` label: the
#: :class:`~geventchat.protocol.CloseReason` values and the four above. A small fixed set whatever errno or OpenSSL
#: texts the peers cause (those go to the log), so the label cannot grow without bound.
CLOSE_LABELS: frozenset[str] = frozenset(
    {RESET, TLS_ERROR, INTERNAL_ERROR, INVALID_PROXY_HEADER, *(reason.value for reason in CloseReason)}
)


@dataclass
class ServerStats:
    """Counters since start. Updated per received chunk (or per write), not per message, to keep the hot path
    short."""

    current: int = 0
    total: int = 0
    rejected_full: int = 0
    #: Complete messages received (each is answered with one reply).
    messages: int = 0
    #: Replies written to the socket, counted once the whole write that carries them went out: the replies of a
    #: write cut short (a client that stopped reading, a reset) are not counted, so ``messages - replies`` is what
    #: was received and never answered.
    replies: int = 0
    #: ``error:`` and ``bye:`` lines written (rejects on accept included), counted the same way as replies.
    notices: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: Room and private lines queued for a member (each is one delivery).
    deliveries: int = 0
    #: Members closed with ``bye: too slow`` because their send queue overflowed.
    chat_overflows: int = 0
    #: Connections ended (or turned away on accept) per reason, one of :data:`CLOSE_LABELS`.
    closed: dict[str, int] = field(default_factory=dict)
    #: Accept → handshake done (timeout line read), per connection; None unless :meth:`time_latency` was called.
    handshake_latency: LatencyHistogram | None = None
    #: Chunk received → its replies written, per chunk that produced output; None unless :meth:`time_latency` was
    #: called.
    reply_latency: LatencyHistogram | None = None

    def count_close(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1

    def time_latency(self) -> None:
        """Turn on the two latency histograms (the server does when it serves metrics). Off, the hot path reads no
        clock for them."""
        if self.handshake_latency is None:
            self.handshake_latency = LatencyHistogram()
        if self.reply_latency is None:
            self.reply_latency = LatencyHistogram()
