"""Which side of a measurement was the limit: one rule for every phase (the matrix's rows and the fan-out's)."""

from __future__ import annotations

#: A side saturated when it used at least this share of its CPU: the generator of its one core (it is
#: single-threaded), the server of the cores it may use (1 when pinned). When both did, the larger share is named.
SATURATED = 0.85
#: Neither side saturated, but one of them waited at least this share of the time for a core (a run queue wait
#: from /proc/PID/schedstat): other work on the machine had it, so the figure is the machine's, not a latency bound.
WAITED = 0.10


def saturation(
    server_cpu: float | None,
    server_cores: float,
    generator_cpu: float | None,
    server_wait: float | None = None,
    generator_wait: float | None = None,
) -> str:
    """Which side was the limit: ``server saturated``, ``generator saturated``, ``neither (waited for a core)``
    (other work had the cores) or ``neither (latency-bound)`` (each waited on the other). CPU and wait figures are
    fractions of one core over the window; the server's are divided by ``server_cores``."""
    server = (server_cpu or 0.0) / server_cores
    generator = generator_cpu or 0.0
    if server >= SATURATED and server >= generator:
        return "server saturated"
    if generator >= SATURATED:
        return "generator saturated"
    if server >= SATURATED:
        return "server saturated"
    if (server_wait or 0.0) / server_cores >= WAITED or (generator_wait or 0.0) >= WAITED:
        return "neither (waited for a core)"
    return "neither (latency-bound)"
