"""The server's counters and close labels live in geventchat.stats: the server owns them and turns its histograms
on from its configuration; the metrics only read them, and neither module imports the other."""

from __future__ import annotations

import ast
from pathlib import Path

import geventchat
from geventchat import ChatServer, ServerConfig
from geventchat.protocol import CloseReason
from geventchat.stats import CLOSE_LABELS, INTERNAL_ERROR, INVALID_PROXY_HEADER, RESET, TLS_ERROR, ServerStats

PACKAGE = Path(geventchat.__file__).parent


def geventchat_imports(path: Path) -> set[str]:
    """Every geventchat module ``path`` imports anywhere (top level, in functions, under TYPE_CHECKING)."""
    package = list(path.relative_to(PACKAGE.parent).parent.parts)  # where its relative imports start
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("geventchat")}


def test_the_server_turns_its_latency_histograms_on_from_its_config() -> None:
    with_metrics = ChatServer(ServerConfig(port=0, metrics_port=0))
    without = ChatServer(ServerConfig(port=0))
    # Not started: no metrics endpoint exists yet, so nothing but the config can have turned them on.
    assert with_metrics.metrics is None
    assert with_metrics.stats.handshake_latency is not None and with_metrics.stats.reply_latency is not None
    assert without.stats.handshake_latency is None and without.stats.reply_latency is None


def test_time_latency_turns_both_histograms_on_once() -> None:
    stats = ServerStats()
    assert stats.handshake_latency is None and stats.reply_latency is None
    stats.time_latency()
    first = (stats.handshake_latency, stats.reply_latency)
    assert None not in first
    stats.time_latency()
    assert (stats.handshake_latency, stats.reply_latency) == first  # kept, with what they counted


def test_close_labels_are_the_close_reasons_and_four_more() -> None:
    assert {reason.value for reason in CloseReason} <= CLOSE_LABELS
    assert CLOSE_LABELS - {reason.value for reason in CloseReason} == {
        RESET,
        TLS_ERROR,
        INTERNAL_ERROR,
        INVALID_PROXY_HEADER,
    }


def test_metrics_and_the_server_do_not_import_each_other() -> None:
    server_imports = set().union(*(geventchat_imports(path) for path in (PACKAGE / "server").glob("*.py")))
    metrics_imports = geventchat_imports(PACKAGE / "metrics.py")
    # The situation: the server starts the metrics endpoint, and both use the counters.
    assert "geventchat.metrics" in server_imports
    assert "geventchat.stats" in server_imports and "geventchat.stats" in metrics_imports
    assert not {name for name in metrics_imports if name.startswith("geventchat.server")}
    assert not {name for name in geventchat_imports(PACKAGE / "stats.py") if name.startswith("geventchat.server")}
