"""A pytest plugin: where every test must run, a skip is a failure.

On a developer's machine a test may skip when a tool it needs is missing (haproxy, docker-compose, root for the
network namespaces) and says why (``-ra`` prints the reason). CI installs all of them (``.ci/run``), so there a
skip can only mean a broken install step or a test that quietly stopped running: it fails, with the skip's reason.

Strict when ``GEVENTCHAT_REQUIRE_ALL=1`` (``.ci/run`` sets it) or ``CI=true`` (what CI services set). A skipped test
fails in its own phase (a ``skipif`` marker in setup, so it is shown as an error); a module skipped while being
collected (``pytest.importorskip`` at module level) is replaced by one item that fails, so the rest of the session
still runs. ``tests/conftest.py`` loads these hooks; the test is tests/test_ci_skips.py.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest


def skips_fail() -> str | None:
    """Why skips are failures in this run (the variable that says so), or None where they may skip."""
    if os.environ.get("GEVENTCHAT_REQUIRE_ALL") == "1":
        return "GEVENTCHAT_REQUIRE_ALL=1"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        return "CI=true"
    return None


def _failure_text(why: str, skip_longrepr: object) -> str:
    # A skip's longrepr is (path, line, "Skipped: reason").
    reason = skip_longrepr[2] if isinstance(skip_longrepr, tuple) else str(skip_longrepr)
    return f"skipped, and with {why} nothing may skip: {reason.removeprefix('Skipped: ')}"


def pytest_report_header() -> str | None:
    why = skips_fail()
    return f"skips are failures here ({why})" if why else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    why = skips_fail()
    if why is None or not report.skipped or hasattr(report, "wasxfail"):
        return report
    text = _failure_text(why, report.longrepr)

    def fail() -> None:
        pytest.fail(text, pytrace=False)

    # The same report pytest makes for a test that called pytest.fail() in this phase (keeps captured output).
    return pytest.TestReport.from_item_and_call(item, pytest.CallInfo.from_call(fail, call.when))


class SkippedAtCollection(pytest.Item):
    """Stands for a module (or directory) that skipped while being collected; running it fails with the reason."""

    def __init__(self, *, text: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text = text

    def runtest(self) -> None:
        pytest.fail(self.text, pytrace=False)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, "skipped at collection"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    why = skips_fail()
    if why is None or not report.skipped:
        return report
    # Not a failed collect report: pytest would stop before running any test ("errors during collection").
    item = SkippedAtCollection.from_parent(collector, name="collection", text=_failure_text(why, report.longrepr))
    return pytest.CollectReport(report.nodeid, "passed", None, [item], report.sections)
