"""The fan-out benchmark phase in its tiniest size: it runs end to end against geventchat (memory and Redis mode) and
the two broadcast references, every message reaches every other member, and the report says who saturated.

Speed is never asserted (the figures come from a shared machine); only that the runs completed and are sane.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import cbuild
from benchmarks.fanout import GEVENT_REFERENCE, GEVENTCHAT, REDIS_MODE, UVLOOP_REFERENCE, saturated_side, target_check
from benchmarks.fanout_report import section

pytest.importorskip("uvloop")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).parent.parent


def _fanout(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", "fanout", "--tiny", "--out", str(tmp_path), "--name", "smoke", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
        env=env,
    )


def _records(tmp_path: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads((tmp_path / "smoke.json").read_text())["results"]
    return records


def _assert_complete(record: dict[str, Any]) -> None:
    assert record["messages"] > 0, record
    assert record["delivered"] == record["expected"] == record["messages"] * (record["size"] - 1), record
    assert record["loss"] == 0 and record["errors"] == 0 and record["closed"] == 0, record
    assert record["echoes"] == record["messages"], record
    assert record["deliveries"] > 0 and record["deliveries_per_s"] > 0, record
    assert record["loadgen_cpu_s"] > 0, record


def test_tiny_fanout_run_delivers_everything_to_every_member(tmp_path: Path) -> None:
    servers = (GEVENTCHAT, GEVENT_REFERENCE, UVLOOP_REFERENCE)
    result = _fanout(tmp_path, "--servers", *servers)
    assert result.returncode == 0, result.stdout + result.stderr

    records = _records(tmp_path)
    assert not [r for r in records if r["mode"] == "error"], records
    for server in servers:
        for size in (3, 5):
            closed = [r for r in records if (r["server"], r["size"], r["mode"]) == (server, size, "closed")]
            opened = [r for r in records if (r["server"], r["size"], r["mode"]) == (server, size, "open")]
            assert len(closed) == 1 and len(opened) == 1, (server, size, records)
            _assert_complete(closed[0])
            assert closed[0]["server_cpu_s"] > 0, closed[0]
            assert closed[0]["join_notices_missing"] == 0, closed[0]  # one process: no notice may be lost
            _assert_complete(opened[0])
            assert opened[0]["latency_samples"] > 0 and 0 < opened[0]["p50"] <= opened[0]["p99"], opened[0]
        single = [r for r in records if (r["server"], r["mode"]) == (server, "single")]
        assert [(r["size"], r["window"]) for r in single] == [(5, 1)], records  # the tiny preset's single size
        _assert_complete(single[0])

    report = (tmp_path / "smoke.md").read_text()
    for server in servers:
        assert f"| {server} | 5 | " in report, report
    assert "who saturated" in report
    assert "One message in flight per room" in report
    assert (tmp_path / "smoke-fanout.png").stat().st_size > 1000


def test_tiny_fanout_run_in_redis_mode(tmp_path: Path) -> None:
    result = _fanout(tmp_path, "--servers", REDIS_MODE, "--sizes", "3")
    assert result.returncode == 0, result.stdout + result.stderr

    records = _records(tmp_path)
    assert [r["mode"] for r in records] == ["closed", "open"], records
    for record in records:
        _assert_complete(record)
        assert record["shared_cores"] is True
        assert record["broker_cpu_s"] > 0, record  # every room line went through redis-server
    assert f"| {REDIS_MODE} | 3 | " in (tmp_path / "smoke.md").read_text()


def test_generator_build_without_a_compiler_is_one_clear_line(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("CC", None)
    result = _fanout(tmp_path, "--servers", GEVENTCHAT, env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no C compiler found" in lines[0], result.stderr
    assert not (tmp_path / "smoke.json").exists()


def test_build_raises_compiler_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(cbuild.CompilerMissing, match="no C compiler found"):
        cbuild.build("fanout_gen", cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def _record(server: str, size: int, **figures: float) -> dict[str, Any]:
    record: dict[str, Any] = {
        "server": server, "size": size, "mode": "closed", "repeat": 0, "deliveries": 1_000_000,
        "deliveries_per_s": 500_000.0, "server_cpu_s": 5.0, "server_cpu": 0.95, "loadgen_cpu": 0.3,
        "broker_cpu": 0.0, "broker_cpu_s": 0.0, "loss": 0, "p50": 0.0, "p99": 0.0, "p999": 0.0, "offered_per_s": 0.0,
    }  # fmt: skip
    record.update(figures)
    return record


def test_a_busy_generator_beside_an_idle_server_is_marked_generator_saturated() -> None:
    busy = _record(GEVENTCHAT, 100, loadgen_cpu=0.97, server_cpu=0.6)
    assert saturated_side(busy) == "generator saturated"
    assert saturated_side(_record(GEVENTCHAT, 100)) == "server"
    assert saturated_side({**busy, "shared_cores": True}) == "shared cores"

    settings = {"sizes": [100], "members": 100, "window": 16, "duration": 1.0, "warmup": 0.1, "repeats": 1}
    settings |= {"rate_fraction": 0.5, "servers": [GEVENTCHAT]}
    lines = section({"settings": settings, "results": [busy]}, [])
    row = next(line for line in lines if line.startswith(f"| {GEVENTCHAT} | 100 |"))
    assert row.endswith("| generator saturated |"), row


def test_target_check_gives_per_core_figure_and_ratio_to_the_gevent_reference() -> None:
    ours = _record(GEVENTCHAT, 100, deliveries=1_000_000, server_cpu_s=5.0, deliveries_per_s=200_000.0)
    reference = _record(GEVENT_REFERENCE, 100, deliveries=1_000_000, server_cpu_s=10.0, deliveries_per_s=100_000.0)
    settings = {"servers": [GEVENTCHAT, GEVENT_REFERENCE]}
    check = target_check({"settings": settings, "results": [ours, reference]})

    assert check is not None
    assert check["per_core"] == pytest.approx(200_000)  # 1,000,000 deliveries for 5 CPU seconds
    assert check["per_core_hit"] is True
    assert check["ratio"] == pytest.approx(2.0) and check["ratio_hit"] is True
    assert check["per_core_ratio"] == pytest.approx(2.0)
    assert target_check({"settings": settings, "results": [ours]}) is None  # no reference, no verdict
    assert target_check({"settings": settings, "results": [ours, reference]}, "single") is None  # not measured


def test_matrix_report_carries_the_fanout_section_and_its_plot_once() -> None:
    from benchmarks import report

    matrix = {"duration": 1.0, "warmup": 0.1, "repeats": 1, "connections": [10], "churn_concurrency": 50}
    matrix |= {"hold": 10, "rate_connections": 10, "rate_fraction": 0.5, "servers": []}
    fanout = {"sizes": [100], "members": 100, "window": 16, "duration": 1.0, "warmup": 0.1, "repeats": 1}
    fanout |= {"rate_fraction": 0.5, "servers": [GEVENTCHAT, GEVENT_REFERENCE]}
    results = [_record(GEVENTCHAT, 100), _record(GEVENT_REFERENCE, 100, deliveries_per_s=100_000.0)]
    data = {"settings": matrix, "results": [], "fanout": {"settings": fanout, "results": results}}

    markdown = report.render(data, "t", ["t-throughput.png", "t-fanout.png"])

    assert "## Chat fan-out" in markdown
    assert f"| {GEVENTCHAT} | 100 | 500,000 |" in markdown
    assert "**hit** (5.00x" in markdown  # 500,000 against the reference's 100,000 deliveries/s
    assert markdown.count("![t-fanout.png]") == 1 and markdown.count("![t-throughput.png]") == 1
