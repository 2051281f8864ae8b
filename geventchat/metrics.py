"""Prometheus metrics for ``--metrics-port``: a collector that reads :class:`~geventchat.stats.ServerStats` at
scrape time, served over HTTP by gevent's WSGI server.

The hot path stays as it was: connections bump plain integer counters per received chunk (as before metrics
existed) and, when metrics are on, observe two :class:`~geventchat.histogram.LatencyHistogram` (a ``bisect`` and two
additions, no lock), which the server turns on itself when its configuration asks for metrics. Nothing here runs per
message; :class:`StatsCollector` turns the counters into Prometheus families only when scraped.

prometheus-client is a core dependency; the CLI checks that it imports before the server listens.
"""

from __future__ import annotations

from collections.abc import Iterable

from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .stats import ServerStats

__all__ = ["MetricsEndpoint", "StatsCollector"]


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


class MetricsEndpoint:
    """``GET /metrics`` on ``host:port`` (0 picks a free port), from the server's own gevent hub.

    Exports the latency histograms only if ``stats`` has them on (:meth:`ServerStats.time_latency`). Raises
    :class:`OSError` from :meth:`start` if the port cannot be bound.
    """

    def __init__(
        self, stats: ServerStats, host: str = "127.0.0.1", port: int = 0, const_labels: dict[str, str] | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StatsCollector(stats, const_labels))
        ProcessCollector(registry=self.registry)  # open fds, RSS, CPU: what the hardening tests watch
        self._server = WSGIServer((host, port), make_wsgi_app(self.registry), log=None)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound."""
        host, port = self._server.socket.getsockname()[:2]
        return host, port

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(timeout=1)
