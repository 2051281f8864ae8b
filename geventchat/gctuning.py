"""Garbage-collector settings for a server holding many connections (applied by the entry point, not on import).

CPython's full (oldest-generation) collection walks every tracked object. A server holding 15,000 connections has
hundreds of thousands of them, so each full collection stops every client for a long time (the benchmarks measured
handshake p99 in the hundreds of milliseconds while connections were opening), and while connections keep arriving
the old generation keeps growing and full collections keep coming.

geventchat's per-connection objects form no reference cycles (they are freed by reference counting when the client
leaves), so the server can afford to let full collections be rare:

- ``gc.freeze()`` after start-up moves everything imported and built so far out of the collector's sight;
- the young generations keep their default thresholds (cheap, and they still catch short-lived cyclic garbage);
- the oldest generation is collected only after :data:`OLDEST_THRESHOLD` young collections instead of 10, so
  cyclic garbage that reaches it is reclaimed late rather than never.

``geventchat serve --gc-tuning off`` keeps CPython's defaults (the benchmark's "before").
"""

from __future__ import annotations

import gc

#: Middle-generation collections between two full collections (CPython's default is 10).
OLDEST_THRESHOLD = 10_000


def tune_collector() -> tuple[int, int, int]:
    """Collect once, freeze what survives, and make full collections rare. Returns the thresholds now in force."""
    gc.collect()
    gc.freeze()
    young, middle, _oldest = gc.get_threshold()
    gc.set_threshold(young, middle, OLDEST_THRESHOLD)
    return gc.get_threshold()
