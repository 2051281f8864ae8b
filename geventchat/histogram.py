"""A latency histogram cheap enough for the per-chunk hot path.

``prometheus_client.Histogram.observe`` takes a lock and walks its buckets; this one is a ``bisect`` and two
additions (one greenlet runs at a time, so no lock is needed). :mod:`geventchat.metrics` exports it at scrape
time as a Prometheus histogram.
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["DEFAULT_BOUNDS", "LatencyHistogram"]

#: Upper bounds (seconds, inclusive) of the buckets: 50 µs to 10 s, roughly 1-2.5-5 per decade.
DEFAULT_BOUNDS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class LatencyHistogram:
    """Counts of observations per bucket (``counts[i]``: ``bounds[i-1] < seconds <= bounds[i]``; the last
    count is above every bound), plus their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DEFAULT_BOUNDS) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bounds must be strictly increasing")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Record one duration in seconds."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs in Prometheus order, ending with ``("+Inf", count)``."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((f"{bound:g}", running))
        out.append(("+Inf", running + self.counts[-1]))
        return out
