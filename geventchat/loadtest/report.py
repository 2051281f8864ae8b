"""End-of-run reporting: the µs latency table on the console, the CSV/JSON files, and a web UI page.

Imports neither Locust nor gevent; it works on whatever ``environment`` object it is given.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .latency import LatencyRecorder, LatencyRow, format_summary, write_csv, write_json

__all__ = ["finish_run", "latency_base_path", "latency_page", "recorder_of"]

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


def finish_run(environment: Any) -> list[LatencyRow]:
    """Print the µs summary and write the files; returns the rows."""
    rows = recorder_of(environment).rows()
    for line in format_summary(rows).splitlines():
        console.info(line)
    console.info("")
    base = latency_base_path(environment.parsed_options)
    if base is not None:
        base.parent.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = base.with_name(base.name + ".csv"), base.with_name(base.name + ".json")
        write_csv(rows, csv_path)
        write_json(rows, json_path)
        log.info("µs latency summary written to %s and %s", csv_path, json_path)
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
