"""Prometheus metrics for ``--metrics-port``: a collector that reads :class:`~geventchat.stats.ServerStats` at
scrape time, the build, the garbage collector, and the process, served over HTTP by gevent's WSGI server.

The hot path stays as it was: connections bump plain integer counters per received chunk (as before metrics
existed) and, when metrics are on, observe two :class:`~geventchat.histogram.LatencyHistogram` (a ``bisect`` and two
additions, no lock), which the server turns on itself when its configuration asks for metrics. Nothing here runs per
message; :class:`StatsCollector` turns the counters into Prometheus families only when scraped. The one hook outside
a scrape is :class:`GCPauses`: two clock readings per garbage collection while the endpoint runs.

prometheus-client is a core dependency; the CLI checks that it imports before the server listens.
"""

from __future__ import annotations

import gc
import logging
import platform
import time
from collections.abc import Iterable

import gevent
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ._accept import QuietAcceptServer
from .histogram import DEFAULT_BOUNDS, LatencyHistogram
from .options import package_version
from .stats import ServerStats

__all__ = ["GC_PAUSE_BOUNDS", "BuildInfo", "GCPauses", "MetricsEndpoint", "StatsCollector"]

#: Upper bounds (seconds) of the GC pause buckets: a young collection takes microseconds, a full one over a server
#: holding many connections can take hundreds of milliseconds (docs/performance.md), so 10 µs to 10 s.
GC_PAUSE_BOUNDS: tuple[float, ...] = (0.00001, 0.000025, *DEFAULT_BOUNDS)


class StatsCollector(Collector):
    """Exports one server's :class:`ServerStats` as ``geventchat_*`` metrics.

    ``const_labels`` are added to every series: with several worker processes each serves its own endpoint with
    ``{"worker": "<index>"}``, and ``sum without (worker) (...)`` aggregates them (see docs/hardening.md).
    """

    def __init__(self, stats: ServerStats, const_labels: dict[str, str] | None = None) -> None:
        self.stats = stats
        self._names = list(const_labels or {})
        self._values = list((const_labels or {}).values())

    def collect(self) -> Iterable[Metric]:
        yield from self._connections()
        yield from self._traffic()
        yield from self._latencies()

    def _connections(self) -> Iterable[Metric]:
        stats = self.stats
        names, values = self._names, self._values
        connections = GaugeMetricFamily("geventchat_connections", "Clients connected now.", labels=names)
        connections.add_metric(values, stats.current)
        yield connections
        accepted = CounterMetricFamily(
            "geventchat_connections_accepted", "Clients accepted and served since start.", labels=names
        )
        accepted.add_metric(values, stats.total)
        yield accepted
        closed = CounterMetricFamily(
            "geventchat_connections_closed",
            "Connections ended (or turned away on accept), by reason.",
            labels=[*names, "reason"],
        )
        # The server counts closes under a small fixed set of reasons (stats.CLOSE_LABELS), fit for a label as is.
        for reason, count in sorted(stats.closed.items()):
            closed.add_metric([*values, reason], count)
        yield closed

    def _traffic(self) -> Iterable[Metric]:
        stats = self.stats
        names, values = self._names, self._values
        messages = CounterMetricFamily(
            "geventchat_messages",
            "Messages: in = complete messages received, out = replies written to the socket (a reply whose write "
            "was cut short, by a client that stopped reading or a reset, is not counted).",
            labels=[*names, "direction"],
        )
        messages.add_metric([*values, "in"], stats.messages)
        messages.add_metric([*values, "out"], stats.replies)
        yield messages
        notices = CounterMetricFamily(
            "geventchat_notices",
            "'error:' and 'bye:' lines written to clients (a 'bye:' on accept, such as 'server full', included).",
            labels=names,
        )
        notices.add_metric(values, stats.notices)
        yield notices
        octets = CounterMetricFamily("geventchat_bytes", "Bytes received and sent.", labels=[*names, "direction"])
        octets.add_metric([*values, "in"], stats.bytes_in)
        octets.add_metric([*values, "out"], stats.bytes_out)
        yield octets
        deliveries = CounterMetricFamily(
            "geventchat_room_deliveries",
            "Room, private and info lines queued for this server's chat members, one per receiving member (counted "
            "as queued: a member closed 'too slow' drops what it had queued).",
            labels=names,
        )
        deliveries.add_metric(values, stats.deliveries)
        yield deliveries
        overflows = CounterMetricFamily(
            "geventchat_chat_overflows",
            "Chat members closed 'too slow': their send queue (--send-queue) overflowed.",
            labels=names,
        )
        overflows.add_metric(values, stats.chat_overflows)
        yield overflows

    def _latencies(self) -> Iterable[Metric]:
        stats = self.stats
        for name, doc, histogram in (
            (
                "geventchat_handshake_seconds",
                "Accept to the client's idle-timeout line read (TLS handshake included).",
                stats.handshake_latency,
            ),
            (
                "geventchat_reply_seconds",
                "Server-side reply latency: a chunk received to its replies written to the socket.",
                stats.reply_latency,
            ),
        ):
            if histogram is not None:
                family = HistogramMetricFamily(name, doc, labels=self._names)
                family.add_metric(self._values, histogram.cumulative(), histogram.sum)
                yield family


class BuildInfo(Collector):
    """``geventchat_build_info{version, python_version, gevent_version} 1``: which build answers (the version from
    the installed distribution's metadata), for joins in queries and for spotting a mixed fleet mid-upgrade."""

    def __init__(self, const_labels: dict[str, str] | None = None) -> None:
        labels = const_labels or {}
        self._family = GaugeMetricFamily(
            "geventchat_build_info",
            "Always 1; the labels say which geventchat, Python and gevent this process runs.",
            labels=[*labels, "version", "python_version", "gevent_version"],
        )
        self._family.add_metric([*labels.values(), package_version(), platform.python_version(), gevent.__version__], 1)

    def collect(self) -> Iterable[Metric]:
        yield self._family


class GCPauses(Collector):
    """``geventchat_gc_pause_seconds{generation}``: how long each garbage collection stopped the whole process
    (every client waits for it), timed by a :data:`gc.callbacks` hook between :meth:`start` and :meth:`stop`; and
    ``geventchat_gc_frozen_objects``, what ``gc.freeze()`` (``--gc-tuning``) hid from the collector.

    prometheus_client's :class:`~prometheus_client.gc_collector.GCCollector` (also on the endpoint) counts
    collections and collected objects per generation, not their duration, and the server tunes the collector
    precisely to make long full collections rare (:mod:`geventchat.gctuning`): this shows whether it works.
    """

    def __init__(self, const_labels: dict[str, str] | None = None) -> None:
        self._names = list(const_labels or {})
        self._values = list((const_labels or {}).values())
        #: One histogram per generation CPython collects (three on 3.11).
        self.pauses = {generation: LatencyHistogram(GC_PAUSE_BOUNDS) for generation in range(len(gc.get_count()))}
        self._started = 0.0

    def start(self) -> None:
        """Time collections from now on (idempotent)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        """Stop timing collections (idempotent); the histograms keep what they counted."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # Runs inside the collector: nothing here may raise or allocate much. One greenlet runs at a time and a
        # collection never yields, so a "start" is always followed by its own "stop".
        if phase == "start":
            self._started = time.perf_counter()
            return
        histogram = self.pauses.get(info["generation"])
        if histogram is not None:
            histogram.observe(time.perf_counter() - self._started)

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(
            "geventchat_gc_pause_seconds",
            "Time each garbage collection stopped the process, by generation (2 is the full collection).",
            labels=[*self._names, "generation"],
        )
        for generation, histogram in self.pauses.items():
            family.add_metric([*self._values, str(generation)], histogram.cumulative(), histogram.sum)
        yield family
        frozen = GaugeMetricFamily(
            "geventchat_gc_frozen_objects",
            "Objects gc.freeze() moved out of the collector's sight (0 with --gc-tuning off).",
            labels=self._names,
        )
        frozen.add_metric(self._values, gc.get_freeze_count())
        yield frozen


class _MetricsHTTPServer(QuietAcceptServer, WSGIServer):
    """gevent's WSGI server with the chat listener's accept back-off: when the process runs out of files, one
    warning per episode (not gevent's traceback per failed accept), and scrapes are answered again once fds free
    up (those that arrived meanwhile wait in the listen backlog)."""

    accept_log = logging.getLogger("geventchat.metrics")
    log_prefix = "metrics endpoint: "


class MetricsEndpoint:
    """``GET /metrics`` on ``host:port`` (0 picks a free port), from the server's own gevent hub.

    Serves the server's statistics (:class:`StatsCollector`; the latency histograms only if ``stats`` has them
    on, :meth:`ServerStats.time_latency`), :class:`BuildInfo`, the garbage collector (prometheus_client's
    ``python_gc_*`` and :class:`GCPauses`, timed while the endpoint runs) and the process (open fds, RSS, CPU:
    what the hardening tests watch). Raises :class:`OSError` from :meth:`start` if the port cannot be bound.
    """

    def __init__(
        self, stats: ServerStats, host: str = "127.0.0.1", port: int = 0, const_labels: dict[str, str] | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StatsCollector(stats, const_labels))
        self.registry.register(BuildInfo(const_labels))
        self.gc_pauses = GCPauses(const_labels)
        self.registry.register(self.gc_pauses)
        GCCollector(registry=self.registry)
        ProcessCollector(registry=self.registry)
        self._server = _MetricsHTTPServer((host, port), make_wsgi_app(self.registry), log=None)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound."""
        host, port = self._server.socket.getsockname()[:2]
        return host, port

    def start(self) -> None:
        self._server.start()
        self.gc_pauses.start()

    def stop(self) -> None:
        self.gc_pauses.stop()
        self._server.stop(timeout=1)
