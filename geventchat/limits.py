"""Per-client-address connection accounting for ``--max-per-ip``.

A client that opens many connections from one address should not be able to take every slot of the server's
connection cap. The server asks :meth:`AddressLimiter.acquire` on accept and calls :meth:`AddressLimiter.release`
when the connection ends; the dictionary holds only addresses with live connections, so it is bounded by the
connection cap.
"""

from __future__ import annotations

__all__ = ["AddressLimiter"]


class AddressLimiter:
    """At most ``limit`` concurrent connections per client address (the host part, not the port)."""

    __slots__ = ("_counts", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        #: Most connections one address may hold at once.
        self.limit = limit
        self._counts: dict[str, int] = {}

    def acquire(self, host: str) -> bool:
        """Count one more connection from ``host``; returns False (counting nothing) if it is at the limit."""
        count = self._counts.get(host, 0)
        if count >= self.limit:
            return False
        self._counts[host] = count + 1
        return True

    def release(self, host: str) -> None:
        """Forget one connection from ``host`` (one that :meth:`acquire` accepted)."""
        count = self._counts.get(host, 0) - 1
        if count > 0:
            self._counts[host] = count
        else:
            self._counts.pop(host, None)

    def count(self, host: str) -> int:
        """Connections currently counted for ``host``."""
        return self._counts.get(host, 0)

    def __len__(self) -> int:
        """Addresses with at least one live connection."""
        return len(self._counts)
