"""The load tester's Locust-free parts: host and option parsing, the stepped shape, failure causes, µs histograms.

None of these modules imports Locust (which would monkey-patch this test process); test_loadtest_runs.py runs the
Locust users themselves in subprocesses.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

import geventchat.loadtest
from geventchat.client import (
    ClosedByServer,
    ConnectionFailed,
    ConnectionRefused,
    ConnectionReset,
    ConnectTimeout,
    ReplyTimeout,
    WrongReply,
)
from geventchat.loadtest.failures import StepFailed, cause_of
from geventchat.loadtest.latency import LatencyRecorder, fine_bucket, format_summary, write_csv, write_json
from geventchat.loadtest.report import latency_base_path
from geventchat.loadtest.settings import BadSettings, Settings, parse_step_spec
from geventchat.loadtest.target import BadTarget, Target, parse_source_addresses, parse_targets


def test_the_pure_modules_do_not_import_locust() -> None:
    assert "locust" not in sys.modules


def test_the_package_names_only_its_public_users_and_refuses_others() -> None:
    assert "ChatUser" in dir(geventchat.loadtest) and "ChatUser" in geventchat.loadtest.__all__
    with pytest.raises(AttributeError, match="NoSuchUser"):
        _ = geventchat.loadtest.NoSuchUser
    assert "locust" not in sys.modules  # neither dir() nor a wrong name imported the users


# What a user's locustfile does, in a fresh process: importing Locust there monkey-patches that process only.
IMPORT_USERS = """
import sys
import geventchat, geventchat.loadtest, geventchat.loadtest.session
print("locust" in sys.modules)
from geventchat.loadtest import ChatUser, GeventChatUser
print("locust" in sys.modules)
import locust
print(issubclass(ChatUser, locust.User), ChatUser.abstract, GeventChatUser.abstract)
print(all(getattr(geventchat.loadtest, name) is not None for name in geventchat.loadtest.__all__))
"""


def test_locust_is_imported_only_when_a_user_class_is_asked_for() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_USERS], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True", "False", "True", "True"]


# --------------------------------------------------------------------------------------------------- --host


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://127.0.0.1:8888", (Target("127.0.0.1", 8888),)),
        ("127.0.0.1:8888", (Target("127.0.0.1", 8888),)),
        ("TCP://localhost:1/", (Target("localhost", 1),)),
        ("[::1]:9000", (Target("::1", 9000),)),
        ("tcp://127.0.0.1:1, 127.0.0.2:2", (Target("127.0.0.1", 1), Target("127.0.0.2", 2))),
    ],
)
def test_host_accepts_tcp_urls_and_host_port(text: str, expected: tuple[Target, ...]) -> None:
    assert parse_targets(text) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (None, "no host given"),
        ("  ", "no host given"),
        ("http://127.0.0.1:8888", "unsupported scheme"),
        ("127.0.0.1", "no port"),
        ("127.0.0.1:0", "bad port"),
        ("127.0.0.1:65536", "bad port"),
        ("127.0.0.1:http", "bad port"),
        ("::1:80", "brackets"),
        ("tcp://:80", "bad host"),
    ],
)
def test_a_bad_host_is_refused_with_what_to_write(text: str | None, complaint: str) -> None:
    with pytest.raises(BadTarget, match=complaint) as raised:
        parse_targets(text)
    assert "tcp://HOST:PORT" in str(raised.value) or "1-65535" in str(raised.value)


def test_target_prints_as_host_port() -> None:
    assert str(Target("127.0.0.1", 80)) == "127.0.0.1:80"
    assert str(Target("::1", 80)) == "[::1]:80"


def test_source_addresses_expand_ranges_and_lists() -> None:
    assert parse_source_addresses("") == ()
    assert parse_source_addresses("127.0.0.1-127.0.0.3, 127.0.1.9") == (
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.1.9",
    )
    for bad in ("127.0.0.3-127.0.0.1", "localhost", "127.0.0.1-::1", "127.0.0.0-127.1.0.0"):
        with pytest.raises(BadTarget):
            parse_source_addresses(bad)


# --------------------------------------------------------------------------------------------------- options


def _options(**overrides: object) -> Namespace:
    defaults = Settings()
    values: dict[str, object] = {
        "gc_timeout": defaults.timeout,
        "gc_message_size": defaults.message_size,
        "gc_think_time": defaults.think_time,
        "gc_connect_timeout": defaults.connect_timeout,
        "gc_reply_timeout": defaults.reply_timeout,
        "gc_idle_margin": defaults.idle_margin,
        "gc_short_timeout": defaults.short_timeout,
        "gc_timeout_tolerance": defaults.tolerance,
        "gc_reconnect_delay": defaults.reconnect_delay,
        "gc_source_addresses": "",
        "gc_prefix": defaults.prefix,
        "gc_shape": "",
        "gc_latency_file": "",
        "gc_tls": defaults.tls,
        "gc_tls_ca": defaults.tls_ca,
    }
    values.update(overrides)
    return Namespace(**values)


def test_settings_come_from_locust_options_including_web_ui_strings() -> None:
    settings = Settings.from_options(
        _options(gc_think_time="0.25", gc_source_addresses="127.0.0.2-127.0.0.3", gc_tls="true", gc_tls_ca="ca.pem")
    )
    assert settings.think_time == 0.25
    assert settings.tls is True and settings.tls_ca == "ca.pem"  # the web UI sends flags as text
    assert settings.source_addresses == ("127.0.0.2", "127.0.0.3")
    assert Settings.from_options(None) == Settings()


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"gc_think_time": -1.0}, "--gc-think-time"),
        ({"gc_timeout": 0.0}, "--gc-timeout"),
        ({"gc_reply_timeout": math.inf}, "--gc-reply-timeout"),
        ({"gc_message_size": 0}, "--gc-message-size"),
        ({"gc_message_size": "big"}, "--gc-"),
        ({"gc_source_addresses": "nowhere"}, "--gc-source-addresses"),
        ({"gc_shape": "1,2"}, "--gc-shape"),
        ({"gc_tls": "maybe"}, "--gc-tls"),
    ],
)
def test_bad_option_values_name_the_option(overrides: dict[str, object], option: str) -> None:
    with pytest.raises(BadSettings, match=option):
        Settings.from_options(_options(**overrides))


def test_idle_user_speaks_a_margin_before_its_timeout_but_never_before_half_of_it() -> None:
    assert Settings(timeout=30, idle_margin=2).idle_hold == 28
    assert Settings(timeout=1, idle_margin=2).idle_hold == 0.5


def test_stepped_shape_adds_a_step_every_interval_holds_the_ceiling_then_stops() -> None:
    spec = parse_step_spec("100, 10, 250, 30")
    assert spec is not None
    assert [spec.users_at(t) for t in (0, 9.9, 10, 19.9, 20, 49.9)] == [100, 100, 200, 200, 250, 250]
    assert spec.users_at(50) is None
    assert spec.spawn_rate == 100
    assert parse_step_spec("") is None
    default_hold = parse_step_spec("5,2,10")
    assert default_hold is not None and default_hold.hold == 2 and default_hold.users_at(4) is None


def test_latency_files_go_next_to_locusts_csv_unless_named() -> None:
    assert latency_base_path(None) is None
    assert latency_base_path(Namespace(gc_latency_file="", csv_prefix=None)) is None
    assert latency_base_path(Namespace(gc_latency_file="", csv_prefix="out/run")) == Path("out/run_latency_us")
    assert latency_base_path(Namespace(gc_latency_file="lat.json", csv_prefix="x")) == Path("lat")


# --------------------------------------------------------------------------------------------------- causes


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (ConnectionRefused("connection refused by 127.0.0.1:1"), "connection refused"),
        (ConnectTimeout("no greeting within 1s"), "connect timeout"),
        (ConnectionReset("connection reset by the server"), "reset by peer"),
        (ClosedByServer("idle timeout (1s)"), "closed by server: idle timeout (1s)"),
        (ClosedByServer(None), "closed by server: no bye"),
        (ReplyTimeout("no answer from the server within 1s"), "reply timeout"),
        (WrongReply("expected the echo of 'a', got 'b'"), "wrong reply"),
        (
            ConnectionFailed("cannot connect to 127.0.0.1:1: Cannot assign requested address"),
            "connect failed: Cannot assign requested address",
        ),
    ],
)
def test_each_client_error_maps_to_a_stable_cause(error: Exception, cause: str) -> None:
    assert cause_of(error) == cause  # type: ignore[arg-type]


def test_a_step_failure_shows_only_its_cause_so_locust_groups_by_it() -> None:
    failure = StepFailed("reply timeout", "no answer from the server within 5s")
    assert repr(failure) == str(failure) == "reply timeout"
    assert failure.detail.startswith("no answer")


# --------------------------------------------------------------------------------------------------- latency


def test_fine_bucket_keeps_two_significant_digits_below_100_ms() -> None:
    assert fine_bucket(0.0374) == pytest.approx(0.037)
    assert fine_bucket(0.374) == pytest.approx(0.37)
    assert fine_bucket(3.74) == pytest.approx(3.7)
    assert fine_bucket(37.4) == 37
    assert fine_bucket(374) == 370
    assert fine_bucket(3740) == 3700
    assert fine_bucket(37400) == 37000


def test_recorder_reports_exact_microsecond_percentiles_per_scenario_and_step() -> None:
    recorder = LatencyRecorder()
    counts = recorder.counter("ChatUser", "echo")
    for micros in range(1, 1001):  # 1..1000 µs, one each
        counts[micros] += 1
    recorder.record("ChatUser", "connect", 250)
    recorder.record_failure("ChatUser", "connect")
    rows = {(r.scenario, r.step): r for r in recorder.rows()}
    echo = rows["ChatUser", "echo"]
    assert (echo.count, echo.failures, echo.min, echo.max) == (1000, 0, 1, 1000)
    assert (echo.p50, echo.p90, echo.p99, echo.p99_9) == (500, 900, 990, 999)
    assert rows["ChatUser", "connect"].failures == 1


def test_histograms_from_several_processes_merge_into_one() -> None:
    workers = [LatencyRecorder(), LatencyRecorder()]
    for micros in range(1, 501):
        workers[0].record("ChatUser", "echo", micros)
        workers[1].record("ChatUser", "echo", micros + 500)
    workers[1].record_failure("ChatUser", "echo")
    master = LatencyRecorder()
    for worker in workers:
        master.add_report(worker.take_report())
        assert worker.take_report() == {}  # a report is a delta: nothing is sent twice
    (echo,) = master.rows()
    assert (echo.count, echo.failures, echo.min, echo.p50, echo.max) == (1000, 1, 1, 500, 1000)


def test_reset_forgets_counts_but_keeps_the_counters_live() -> None:
    recorder = LatencyRecorder()
    counts = recorder.counter("IdleUser", "idle")
    counts[40] += 1
    recorder.reset()
    assert recorder.rows() == []
    counts[41] += 1
    assert [r.count for r in recorder.rows()] == [1]


def test_summary_table_and_files(tmp_path: Path) -> None:
    recorder = LatencyRecorder()
    for micros in (30, 40, 50):
        recorder.record("ChatUser", "echo", micros)
    rows = recorder.rows()
    table = format_summary(rows)
    assert "Latency in µs" in table
    assert table.splitlines()[-1].split()[:4] == ["ChatUser", "echo", "3", "0"]
    write_csv(rows, tmp_path / "lat.csv")
    write_json(rows, tmp_path / "lat.json")
    (line,) = csv.DictReader((tmp_path / "lat.csv").read_text(encoding="utf-8").splitlines())
    assert (line["step"], line["count"], line["p50_us"], line["max_us"]) == ("echo", "3", "40", "50")
    data = json.loads((tmp_path / "lat.json").read_text(encoding="utf-8"))
    assert data["unit"] == "us" and data["rows"][0]["p99_9"] == 50
    assert format_summary([]) == "Latency (µs): no requests recorded"
