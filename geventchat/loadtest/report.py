"""End-of-run reporting: the µs latency table on the console, the CSV/JSON/``.hlog`` files, the section added to
Locust's HTML report, and the rows of the web UI tab (:mod:`.webui`).

Imports neither Locust nor gevent; it works on whatever ``environment`` object it is given.
"""

from __future__ import annotations

import html
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .latency import LatencyRecorder, LatencyRow, format_summary, write_csv, write_hlog, write_json

__all__ = [
    "TABLE_COLUMNS",
    "failure_causes",
    "finish_run",
    "html_section",
    "latency_base_path",
    "latency_page",
    "recorder_of",
    "table_rows",
    "with_html_section",
]

log = logging.getLogger("loadtest")
# Locust prints its statistics tables through this logger (plain lines on stdout); ours goes the same way.
console = logging.getLogger("locust.stats_logger")


def recorder_of(environment: Any) -> LatencyRecorder:
    """The environment's latency recorder (created on first use; one per process, kept across runs)."""
    recorder: LatencyRecorder | None = getattr(environment, "geventchat_latency", None)
    if recorder is None:
        recorder = LatencyRecorder()
        environment.geventchat_latency = recorder
    return recorder


def latency_base_path(options: Any) -> Path | None:
    """Where the µs files go: ``--gc-latency-file PATH`` (``PATH.csv``, ``PATH.json``), else
    ``PREFIX_latency_us.*`` next to Locust's ``--csv PREFIX`` files, else nowhere."""
    if options is None:
        return None
    explicit = str(getattr(options, "gc_latency_file", "") or "")
    if explicit:
        path = Path(explicit)
        return path.with_suffix("") if path.suffix in (".csv", ".json") else path
    prefix = getattr(options, "csv_prefix", None)
    return Path(f"{prefix}_latency_us") if prefix else None


#: The columns of the web UI tab and the HTML report section: (key, title). Keys are plain lowercase words because
#: Locust's web UI camel-cases table keys (``p99_9`` would not survive).
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("scenario", "Scenario"),
    ("step", "Step"),
    ("count", "# ok"),
    ("failures", "# fails"),
    ("min", "min µs"),
    ("mean", "mean µs"),
    ("p50", "p50 µs"),
    ("p90", "p90 µs"),
    ("p99", "p99 µs"),
    ("p999", "p99.9 µs"),
    ("max", "max µs"),
    ("causes", "failures by cause"),
)


def failure_causes(environment: Any) -> dict[tuple[str, str], dict[str, int]]:
    """``{(scenario, step): {cause: occurrences}}`` from Locust's own failure statistics (merged from the workers
    by Locust; the request type is the scenario, the error text the cause)."""
    runner = getattr(environment, "runner", None)
    errors = runner.stats.errors.values() if runner is not None else ()
    causes: dict[tuple[str, str], dict[str, int]] = {}
    for error in errors:
        by_cause = causes.setdefault((str(error.method), str(error.name)), {})
        by_cause[str(error.error)] = by_cause.get(str(error.error), 0) + int(error.occurrences)
    return causes


def table_rows(rows: list[LatencyRow], causes: dict[tuple[str, str], dict[str, int]]) -> list[dict[str, Any]]:
    """One dict per (scenario, step) with the :data:`TABLE_COLUMNS` keys; ``causes`` reads
    ``connection refused: 17; reply timeout: 2`` (most frequent first)."""
    table = []
    for row in rows:
        by_cause = sorted(causes.get((row.scenario, row.step), {}).items(), key=lambda item: (-item[1], item[0]))
        values = asdict(row)
        values["p999"] = values.pop("p99_9")
        values["causes"] = "; ".join(f"{cause}: {count}" for cause, count in by_cause)
        table.append(values)
    return table


def html_section(table: list[dict[str, Any]]) -> str:
    """The µs table as an HTML ``<section>`` (inline styles: it is added to Locust's self-contained report)."""
    cell = "padding:2px 10px;border-bottom:1px solid #ccc;text-align:{align}"
    head = "".join(
        f'<th style="{cell.format(align="left")}">{html.escape(title)}</th>' for _key, title in TABLE_COLUMNS
    )
    body = []
    for values in table:
        cells = []
        for key, _title in TABLE_COLUMNS:
            align = "left" if key in ("scenario", "step", "causes") else "right"
            cells.append(f'<td style="{cell.format(align=align)}">{html.escape(str(values[key]))}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    rows = "".join(body) or f'<tr><td colspan="{len(TABLE_COLUMNS)}">no requests recorded</td></tr>'
    return (
        '<section id="geventchat-latency" style="font-family:sans-serif;margin:24px">'
        "<h2>geventchat: latency in µs per scenario and step</h2>"
        "<p>HdrHistogram, 3 significant digits; failures are counted apart from the percentiles.</p>"
        f'<table style="border-collapse:collapse"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
        "</section>"
    )


def with_html_section(report: str, section: str) -> str:
    """Locust's HTML report with ``section`` added at the end of its body (Locust's report has no extension point
    for tables of a locustfile's own; its React app renders into ``#root``, above the section)."""
    end = report.rfind("</body>")
    return report + section if end < 0 else report[:end] + section + report[end:]


def finish_run(environment: Any) -> list[LatencyRow]:
    """Print the µs summary; write the CSV/JSON files, the ``.hlog`` and the section of ``--html``'s report, where
    asked for. Returns the rows."""
    recorder = recorder_of(environment)
    rows = recorder.rows()
    for line in format_summary(rows).splitlines():
        console.info(line)
    console.info("")
    tally: Any = getattr(environment, "geventchat_fanout", None)
    if tally is not None and tally.sent:
        from .rooms import format_fanout  # rooms imports gevent; this module does not, unless RoomUser ran

        console.info(format_fanout(tally))
        console.info("")
    options = environment.parsed_options
    base = latency_base_path(options)
    if base is not None:
        base.parent.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = base.with_name(base.name + ".csv"), base.with_name(base.name + ".json")
        write_csv(rows, csv_path)
        write_json(rows, json_path)
        log.info("µs latency summary written to %s and %s", csv_path, json_path)
    runner = getattr(environment, "runner", None)
    start = float(runner.stats.start_time) if runner is not None else time.time()
    hlog = str(getattr(options, "gc_hlog", "") or "")
    if hlog:
        path = Path(hlog)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_hlog(recorder.histograms(), path, start, time.time())
        log.info("µs latency histograms written to %s (HdrHistogram log)", path)
    html_file = Path(str(getattr(options, "html_file", "") or ""))
    # Locust writes its report just before the `quit` event, except when stopped by SIGTERM: a report older than
    # this run is an earlier run's, and stays as it is.
    if html_file.name and html_file.is_file() and html_file.stat().st_mtime >= start:
        report = html_file.read_text(encoding="utf-8")
        section = html_section(table_rows(rows, failure_causes(environment)))
        html_file.write_text(with_html_section(report, section), encoding="utf-8")
    return rows


def latency_page(web_ui: Any, recorder: LatencyRecorder) -> None:
    """Serve the live µs table at ``/geventchat/latency`` in Locust's web UI (``?format=json`` for JSON)."""
    from flask import Response, jsonify, request

    def geventchat_latency() -> Any:
        rows = recorder.rows()
        if request.args.get("format") == "json":
            return jsonify({"unit": "us", "rows": [asdict(row) for row in rows]})
        return Response(format_summary(rows) + "\n", mimetype="text/plain; charset=utf-8")

    view = web_ui.auth_required_if_enabled(geventchat_latency)
    web_ui.app.add_url_rule("/geventchat/latency", "geventchat_latency", view)
