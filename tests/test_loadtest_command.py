"""``geventchat loadtest`` / ``python -m geventchat.loadtest``: the packaged locustfile, its help, the Locust version
it requires, and the files a run writes (Locust's CSV split by scenario, the ``.hlog``, the HTML report's section).

Locust runs in subprocesses (its import monkey-patches the process); the modules tested directly here do not import
it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import gevent.subprocess
import pytest
from hdrh.log import HistogramLogReader

from geventchat.loadtest.compat import MINIMUM_LOCUST, LocustTooOld, check_locust
from geventchat.loadtest.latency import LatencyRecorder, hlog_tag, new_histogram, write_hlog
from geventchat.loadtest.report import html_section, table_rows, with_html_section
from geventchat.loadtest.settings import _OPTIONS, Settings
from geventchat.server import ChatServer

MINIMUM = ".".join(map(str, MINIMUM_LOCUST))


def loadtest(*args: str, cwd: Path, timeout: float = 45) -> tuple[int, str, str]:
    """``python -m geventchat.loadtest ARGS`` in ``cwd``, waited on cooperatively: (exit code, stdout, stderr)."""
    completed = gevent.subprocess.run(
        [sys.executable, "-m", "geventchat.loadtest", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    return completed.returncode, completed.stdout, completed.stderr


def python(code: str, cwd: Path) -> tuple[int, str, str]:
    completed = gevent.subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=45, cwd=cwd)
    return completed.returncode, completed.stdout, completed.stderr


def read_hlog(path: Path) -> dict[str, int]:
    """Every interval of an ``.hlog``: {tag: total count}."""
    reader = HistogramLogReader(str(path), new_histogram())
    counts: dict[str, int] = {}
    try:
        for _ in range(10_000):  # bounded: a log of ours has one interval per step
            histogram = reader.get_next_interval_histogram()
            if histogram is None:
                break
            counts[histogram.get_tag()] = counts.get(histogram.get_tag(), 0) + histogram.get_total_count()
    finally:
        reader.close()
    return counts


# --------------------------------------------------------------------------------------------------- help


def test_help_shows_locusts_options_then_every_gc_option_with_its_default(tmp_path: Path) -> None:
    code, out, err = loadtest("--help", cwd=tmp_path)
    assert code == 0, err
    assert "--headless" in out and "--processes" in out  # Locust's own help came first
    gc_part = out[out.index("geventchat options") :]
    for flag, keywords in _OPTIONS:
        assert flag in gc_part, flag
        default = keywords.get("default")
        if "%(default)s" in keywords.get("help", ""):
            assert f"Default: {default}" in " ".join(gc_part.split()), flag
    assert f"Default: {Settings().timeout}" in " ".join(gc_part.split())


# --------------------------------------------------------------------------------------------------- Locust version


@pytest.mark.parametrize("version", [MINIMUM, "2.47.0", "3.0", "2.43.4.dev7"])
def test_a_locust_with_the_bucketing_hook_passes(version: str) -> None:
    check_locust(version, has_bucket_hook=True)


@pytest.mark.parametrize(("version", "has_hook"), [("2.43.3", True), ("2.30.0", True), ("2.47.0", False)])
def test_an_older_locust_or_one_without_the_hook_is_refused(version: str, has_hook: bool) -> None:
    with pytest.raises(LocustTooOld) as raised:
        check_locust(version, has_bucket_hook=has_hook)
    message = str(raised.value)
    assert "\n" not in message
    assert f"Locust >= {MINIMUM}" in message and f"found {version}" in message


# The command reads the version from the distribution's metadata (importing Locust would patch the process): fake
# an older one there, in a process of its own.
FAKE_OLD_METADATA = """
import sys
from importlib import metadata
real = metadata.version
metadata.version = lambda name: "2.43.3" if name == "locust" else real(name)
from geventchat.loadtest.command import main
sys.exit(main(["--headless", "-t", "1s", "--host", "127.0.0.1:9", "ChatUser"]))
"""

# The locustfile checks the Locust it runs in: fake an older version string there.
FAKE_OLD_LOCUST = """
import locust
locust.__version__ = "2.43.3"
import geventchat.loadtest.locustfile
"""


def test_the_command_refuses_an_older_locust_with_one_line_and_exit_2(tmp_path: Path) -> None:
    code, out, err = python(FAKE_OLD_METADATA, cwd=tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]  # one line, no traceback
    assert f"needs Locust >= {MINIMUM}" in err and "found 2.43.3" in err
    assert "Locust" not in out  # Locust never ran


def test_the_locustfile_refuses_an_older_locust_with_a_clear_error(tmp_path: Path) -> None:
    code, _out, err = python(FAKE_OLD_LOCUST, cwd=tmp_path)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("geventchat.loadtest.compat.LocustTooOld: ")
    assert f"needs Locust >= {MINIMUM}" in last and "found 2.43.3" in last


# --------------------------------------------------------------------------------------------------- .hlog, HTML


def test_hlog_parses_back_with_one_tag_per_step_and_the_recorded_counts(tmp_path: Path) -> None:
    recorder = LatencyRecorder()
    for micros in (40, 41, 900, 15_000):
        recorder.record("ChatUser", "echo", micros)
    recorder.record("ChurnUser", "connect", 250)
    recorder.record_failure("ChurnUser", "greeting")  # failures only: no histogram, no interval
    path = tmp_path / "run.hlog"
    write_hlog(recorder.histograms(), path, start=1_700_000_000.25, end=1_700_000_010.5)
    assert read_hlog(path) == {"ChatUser.echo": 4, "ChurnUser.connect": 1}
    reader = HistogramLogReader(str(path), new_histogram())
    first = reader.get_next_interval_histogram()
    reader.close()
    assert first.get_max_value() == pytest.approx(15_000, rel=1e-3)  # µs, at 3 significant digits
    assert first.get_start_time_stamp() == pytest.approx(1_700_000_000_250, abs=1)  # ms since the epoch


def test_hlog_tags_hold_no_separator() -> None:
    assert hlog_tag("ChatUser", "echo") == "ChatUser.echo"
    assert hlog_tag("My User", "a,b") == "My_User.a_b"


def test_the_html_section_escapes_causes_and_goes_before_the_end_of_the_body() -> None:
    recorder = LatencyRecorder()
    recorder.record("ChatUser", "echo", 42)
    recorder.record_failure("ChatUser", "echo")
    table = table_rows(recorder.rows(), {("ChatUser", "echo"): {"closed by server: <b>full</b>": 3}})
    assert table[0]["causes"] == "closed by server: <b>full</b>: 3" and table[0]["p50"] == 42
    report = with_html_section("<html><body><div id=root></div></body></html>", html_section(table))
    assert report.index('id="geventchat-latency"') < report.index("</body>")
    assert "&lt;b&gt;full&lt;/b&gt;: 3" in report and "<b>full</b>" not in report


# --------------------------------------------------------------------------------------------------- a real run


def test_a_run_of_the_packaged_locustfile_splits_scenarios_and_writes_csv_hlog_and_html(
    start_server: Callable[..., ChatServer], tmp_path: Path
) -> None:
    host, port = start_server(linger=0.5).address
    out = tmp_path / "out"
    # tmp_path holds no locustfile: the packaged one runs.
    code, stdout, stderr = loadtest(
        "--headless",
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        "2s",
        "--host",
        f"{host}:{port}",
        "--gc-think-time",
        "0.01",
        "--csv",
        str(out / "run"),
        # Locust rewrites run_stats.csv once a second, not at exit (a starved run can end between two writes):
        # its JSON, written at exit, carries the same rows to check the split on.
        "--json-file",
        str(out / "stats"),
        "--html",
        str(out / "report.html"),
        "--gc-hlog",
        str(out / "run.hlog"),
        "ChatUser",
        "ChurnUser",
        cwd=tmp_path,
    )
    assert code == 0, (stdout + stderr)[-3000:]
    entries = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    rows = {(entry["method"], entry["name"]): entry["num_requests"] for entry in entries}
    # Each scenario's connect is its own row of Locust's statistics (request type = the scenario).
    assert rows.get(("ChatUser", "connect"), 0) > 0 and rows.get(("ChurnUser", "connect"), 0) > 0, rows
    assert rows[("ChurnUser", "connect")] > rows[("ChatUser", "connect")]  # ChurnUser reconnects every cycle
    # The .hlog holds every successful request of the µs table, one tag per scenario and step.
    latency = json.loads((out / "run_latency_us.json").read_text(encoding="utf-8"))["rows"]
    assert read_hlog(out / "run.hlog") == {f"{r['scenario']}.{r['step']}": r["count"] for r in latency if r["count"]}
    assert {"ChatUser.echo", "ChurnUser.connect"} <= set(read_hlog(out / "run.hlog"))
    # Locust's HTML report ends with the µs section, one row per scenario and step.
    report = (out / "report.html").read_text(encoding="utf-8")
    section = report[report.index('<section id="geventchat-latency"') :]
    assert section.count("<tr>") == 1 + len(latency)  # the header and the rows
    assert ">ChurnUser</td>" in section and ">connect</td>" in section
