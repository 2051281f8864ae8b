"""The benchmark tooling in its tiniest configuration: it runs end to end and writes a report with numbers.

Speed is not asserted here (the figures come from a shared machine); only that every phase produced results.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uvloop")
pytest.importorskip("matplotlib")


def test_tiny_run_writes_a_report_with_numbers(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--tiny", "--servers", "geventchat", "gevent-minimal",
         "--out", str(tmp_path), "--name", "smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr

    data = json.loads((tmp_path / "smoke.json").read_text())
    by_mode: dict[tuple[str, str], dict[str, Any]] = {(r["server"], r["mode"]): r for r in data["results"]}
    for server in ("geventchat", "gevent-minimal"):
        assert by_mode[(server, "echo")]["replies_per_s"] > 0
        assert by_mode[(server, "echo")]["errors"] == 0
        assert by_mode[(server, "churn")]["cycles_per_s"] > 0
        assert by_mode[(server, "rate")]["replies_per_s"] > 0
        hold = by_mode[(server, "hold")]
        assert hold["opened"] == hold["connections"] == hold["answered"]
    assert not [r for r in data["results"] if r["mode"] == "error"]

    report = (tmp_path / "smoke.md").read_text()
    assert "geventchat @100" in report
    assert re.search(r"\| geventchat \| [\d,]+", report), report
    assert (tmp_path / "smoke-throughput.png").stat().st_size > 1000
    assert (tmp_path / "smoke-memory-churn.png").stat().st_size > 1000
