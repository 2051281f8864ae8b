"""tests/ci_skips.py: in CI a skip fails the run with its reason; elsewhere it stays a skip and says why."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from . import ci_skips, conftest

ROOT = Path(__file__).resolve().parent.parent

SKIPPING_TESTS = """
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="no frobnicator on this machine")
def test_skipped_by_marker():
    pass

def test_skipped_in_its_body():
    pytest.skip("the body skipped")
"""
SKIPPING_MODULE = """
import pytest

pytest.importorskip("geventchat_no_such_module")

def test_never_collected():
    pass
"""
REASONS = ["no frobnicator on this machine", "the body skipped", "No module named 'geventchat_no_such_module'"]


def run_pytest(directory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest with only the ci_skips plugin, in ``directory`` (its own empty pytest.ini), under ``env``."""
    (directory / "pytest.ini").write_text("[pytest]\n")
    (directory / "test_skipping.py").write_text(SKIPPING_TESTS)
    (directory / "test_skipping_module.py").write_text(SKIPPING_MODULE)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "GEVENTCHAT_REQUIRE_ALL", "PYTEST_ADDOPTS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.ci_skips", "-p", "no:cacheprovider", "-ra", "-v"],
        cwd=directory,
        env={**clean, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def final_counts(output: str) -> dict[str, int]:
    """``{"passed": 1, "failed": 2, ...}`` from pytest's closing line."""
    last = output.strip().splitlines()[-1]
    return {word: int(count) for count, word in re.findall(r"(\d+) (\w+)", last)}


@pytest.mark.parametrize("variable", ["CI=true", "GEVENTCHAT_REQUIRE_ALL=1"])
def test_in_ci_every_skip_fails_with_its_reason(tmp_path: Path, variable: str) -> None:
    name, value = variable.split("=")
    result = run_pytest(tmp_path, **{name: value})
    output = result.stdout + result.stderr
    assert f"skips are failures here ({variable})" in output  # the plugin was loaded and saw the variable
    assert result.returncode == 1, output
    # The skip marker fails in setup (an error), pytest.skip() in the call, and the module skipped at collection
    # becomes one failing item while the rest of the session still ran.
    assert final_counts(output) == {"passed": 1, "failed": 2, "error": 1}, output
    for reason in REASONS:  # each failure's text, in full in the failures section
        failure = rf"^skipped, and with {re.escape(variable)} nothing may skip: .*{re.escape(reason)}"
        assert re.search(failure, output, re.MULTILINE), reason
    assert re.search(r"^FAILED test_skipping_module.py::collection ", output, re.MULTILINE)
    assert re.search(r"^ERROR test_skipping.py::test_skipped_by_marker ", output, re.MULTILINE)
    assert re.search(r"^FAILED test_skipping.py::test_skipped_in_its_body ", output, re.MULTILINE)


def test_elsewhere_a_skip_stays_a_skip_and_says_why(tmp_path: Path) -> None:
    result = run_pytest(tmp_path)
    output = result.stdout + result.stderr
    assert "skips are failures" not in output
    assert result.returncode == 0, output
    assert final_counts(output) == {"passed": 1, "skipped": 3}, output
    for reason in REASONS:
        assert re.search(rf"^SKIPPED \[1\] .*{re.escape(reason)}", output, re.MULTILINE), reason


def test_this_suite_runs_under_the_plugin(pytestconfig: pytest.Config) -> None:
    assert conftest.pytest_plugins == ["tests.ci_skips"]
    assert pytestconfig.pluginmanager.is_registered(ci_skips)
