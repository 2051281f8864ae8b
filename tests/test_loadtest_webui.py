"""The load tester's tab in Locust's web UI, rendered by a real headless browser (Debian's ``chromium``).

A short run with the web UI on a free loopback port (``--autostart``) against a geventchat server process; once the
tab's rows carry numbers in Locust's ``/stats/requests`` answer, chromium loads the page with the tab selected and
dumps the DOM after the page's scripts ran; the tab must be there with a row of numbers per scenario and step.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from geventchat.loadtest.webui import CSV_ROUTE, TAB_KEY
from geventchat.testing import ServerProcess, free_loopback_port, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


class Cells(HTMLParser):
    """The text of every table row in a page: one list of cell texts per ``<tr>``."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


@pytest.fixture
def web_ui(server_process: Callable[..., ServerProcess], tmp_path: Path) -> Iterator[str]:
    """A load test running ChatUser and ChurnUser with its web UI on 127.0.0.1; yields the UI's base URL."""
    server = server_process("--host", "127.0.0.1")
    port = free_loopback_port()
    log = (tmp_path / "locust.log").open("w", encoding="utf-8")
    locust = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geventchat.loadtest",
            "--autostart",
            "-u",
            "4",
            "-r",
            "4",
            "-t",
            "120s",  # ended by the test once the page is checked
            "--web-host",
            "127.0.0.1",
            "--web-port",
            str(port),
            "--host",
            f"127.0.0.1:{server.port}",
            "--gc-think-time",
            "0.01",
            "ChatUser",
            "ChurnUser",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        locust.send_signal(signal.SIGTERM)
        try:
            locust.wait(timeout=20)
        except subprocess.TimeoutExpired:
            locust.kill()
            locust.wait(timeout=5)
        log.close()


def tab_rows(base: str) -> list[dict[str, Any]]:
    """The tab's rows in the web UI's own poll answer (empty while the UI is not up yet)."""
    try:
        data = json.loads(get(f"{base}/stats/requests"))
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return []
    tabs = {tab["key"]: tab["data"] for tab in data.get("extended_stats", [])}
    rows: list[dict[str, Any]] = tabs.get(TAB_KEY, [])
    return rows


@pytest.mark.timeout(150)
def test_the_latency_tab_renders_numbers_per_scenario_and_step_in_chromium(web_ui: str, tmp_path: Path) -> None:
    assert CHROMIUM is not None

    def echoes_counted() -> bool:
        scenarios = {row["scenario"] for row in tab_rows(web_ui) if row["step"] == "echo" and row["count"] > 0}
        return scenarios == {"ChatUser", "ChurnUser"}

    wait_until(echoes_counted, timeout=60, what="both scenarios' echoes in the web UI's extended_stats")
    # --virtual-time-budget: chromium runs the page's scripts (the React app fetches /stats/requests) before it
    # dumps the DOM. A profile of the test's own keeps it off any user's.
    completed = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            f"{web_ui}/?tab={TAB_KEY}",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    dom = completed.stdout
    assert "Latency (microseconds)" in dom  # the tab, among Locust's own
    cells = Cells()
    cells.feed(dom)
    header = next((row for row in cells.rows if row[:2] == ["Scenario", "Step"]), None)
    assert header is not None, dom[-3000:]
    assert {"p50 µs", "p99 µs", "p99.9 µs", "failures by cause"} <= set(header)
    rows = {(row[0], row[1]): dict(zip(header, row, strict=True)) for row in cells.rows if len(row) == len(header)}
    for scenario in ("ChatUser", "ChurnUser"):
        echo = rows.get((scenario, "echo"))
        assert echo is not None, sorted(rows)
        assert int(echo["# ok"]) > 0
        assert 0 < int(echo["p50 µs"]) <= int(echo["p99 µs"]) <= int(echo["max µs"])
    assert ("ChurnUser", "connect") in rows and ("ChatUser", "connect") in rows  # the scenarios stay apart
    # The same table downloads as CSV.
    lines = get(f"{web_ui}{CSV_ROUTE}").decode().splitlines()
    assert lines[0].startswith("scenario,step,count,failures,")
    assert any(line.startswith("ChurnUser,echo,") for line in lines)
    # The HTML report the web UI serves ends with the same table.
    report = get(f"{web_ui}/stats/report").decode()
    section = report[report.index('<section id="geventchat-latency"') :]
    assert ">ChurnUser</td><td" in section and section.index("</section>") < section.index("</body>")
