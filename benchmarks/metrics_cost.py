"""What the metrics cost on the per-chunk hot path: the server's LatencyHistogram.observe (plus the two
perf_counter() calls that time a chunk) against prometheus_client's Histogram.observe. Prints ns per call,
medians of 5 runs, and the ratio.

    .venv/bin/python benchmarks/metrics_cost.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram

from geventchat.histogram import DEFAULT_BOUNDS, LatencyHistogram

CALLS = 200_000


def per_call_ns(body: Callable[[], None]) -> float:
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(CALLS // 100):
            body()
        runs.append((time.perf_counter() - started) / (CALLS // 100) / 100 * 1e9)
    return statistics.median(runs)


def main() -> None:
    ours = LatencyHistogram()
    theirs = Histogram("x_seconds", "x", buckets=DEFAULT_BOUNDS, registry=CollectorRegistry())
    perf_counter = time.perf_counter
    sample = 0.00042

    def observe_ours() -> None:
        for _ in range(100):
            ours.observe(sample)

    def observe_theirs() -> None:
        for _ in range(100):
            theirs.observe(sample)

    def timed_chunk_ours() -> None:  # what the server adds per chunk when metrics are on
        for _ in range(100):
            received_at = perf_counter()
            ours.observe(perf_counter() - received_at)

    def empty() -> None:
        for _ in range(100):
            pass

    loop = per_call_ns(empty)
    results = {
        "LatencyHistogram.observe": per_call_ns(observe_ours) - loop,
        "prometheus_client Histogram.observe": per_call_ns(observe_theirs) - loop,
        "per chunk with metrics on (2 perf_counter + observe)": per_call_ns(timed_chunk_ours) - loop,
    }
    for name, ns in results.items():
        print(f"{name:55s} {ns:7.0f} ns")
    ratio = results["prometheus_client Histogram.observe"] / results["LatencyHistogram.observe"]
    print(f"prometheus_client / ours: {ratio:.1f}x")


if __name__ == "__main__":
    main()
