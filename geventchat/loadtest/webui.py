"""The load tester's tab in Locust's web UI, through Locust's own extension points.

Locust's web UI renders extra tabs from three template arguments (``extended_tabs``: the tab, ``extended_tables``:
its columns, ``extended_csv_files``: download links) and fills them from an ``extended_stats`` list in the
``/stats/requests`` answer it polls every two seconds, so the tab refreshes live as the rest of the page does.
:func:`install_tab` sets the arguments and adds the rows to that answer; it also adds the µs section to the HTML
report the web UI serves (``/stats/report``) and a CSV download of the table.

Imports Flask (the web UI is a Flask app) but not Locust.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from .latency import LatencyRecorder
from .report import TABLE_COLUMNS, failure_causes, html_section, table_rows, with_html_section

__all__ = ["CSV_ROUTE", "TAB_KEY", "install_tab"]

#: The tab's key: ``http://localhost:8089/?tab=geventchat-latency`` opens it.
TAB_KEY = "geventchat-latency"
#: Where the tab's table downloads as CSV.
CSV_ROUTE = "/geventchat/latency.csv"


def install_tab(environment: Any, web_ui: Any, recorder: LatencyRecorder) -> None:
    """Add the "Latency (microseconds)" tab to ``web_ui`` (a ``locust.web.WebUI``), fed from ``recorder`` and
    Locust's own failure statistics."""
    from flask import Response, request

    def current_table() -> list[dict[str, Any]]:
        return table_rows(recorder.rows(), failure_causes(environment))

    # Kept across Locust's update_template_args(), which merges its own keys over the existing ones.
    web_ui.template_args["extended_tabs"] = [{"title": "Latency (microseconds)", "key": TAB_KEY}]
    web_ui.template_args["extended_tables"] = [
        {"key": TAB_KEY, "structure": [{"key": key, "title": title} for key, title in TABLE_COLUMNS]}
    ]
    web_ui.template_args["extended_csv_files"] = [{"href": CSV_ROUTE, "title": "Download µs latency table CSV"}]

    def add_rows(response: Any) -> Any:
        path = request.path
        if path.endswith("/stats/requests") and response.status_code == 200 and response.is_json:
            data = response.get_json()
            data["extended_stats"] = [{"key": TAB_KEY, "data": current_table()}]
            response.set_data(json.dumps(data))
        elif path.endswith("/stats/report") and response.status_code == 200:
            # The report the web UI shows and downloads: the same section `--html` gets at the end of a run.
            response.direct_passthrough = False
            report = response.get_data(as_text=True)
            response.set_data(with_html_section(report, html_section(current_table())))
        return response

    web_ui.app.after_request(add_rows)

    def latency_csv() -> Any:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([key for key, _title in TABLE_COLUMNS])
        for values in current_table():
            writer.writerow([values[key] for key, _title in TABLE_COLUMNS])
        return Response(
            out.getvalue(),
            mimetype="text/csv",
            headers={"Content-Disposition": "attachment;filename=geventchat_latency_us.csv"},
        )

    view = web_ui.auth_required_if_enabled(latency_csv)
    web_ui.app.add_url_rule(CSV_ROUTE, "geventchat_latency_csv", view)
