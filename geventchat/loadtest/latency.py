"""Microsecond latency histograms per scenario and step, mergeable across Locust processes.

Locust keeps response times in milliseconds and, by default, rounds anything under 100 ms to a whole millisecond:
every loopback echo shows as 0 or 1 ms. This module keeps the real figures. The hot path records a whole number of
microseconds into a plain ``dict`` (an increment, no allocation); the counts are folded into an HdrHistogram
(3 significant figures, 1 µs to 1 hour) only when somebody reads or ships them, so recording costs almost nothing
next to a request.

Nothing here imports Locust (importing Locust monkey-patches the process), so tests can use it directly.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogWriter

__all__ = [
    "HIGHEST_MICROS",
    "PERCENTILES",
    "LatencyRecorder",
    "LatencyRow",
    "fine_bucket",
    "format_summary",
    "hlog_tag",
    "write_csv",
    "write_hlog",
    "write_json",
]

#: Longest latency tracked, in µs (one hour); longer ones are recorded as this.
HIGHEST_MICROS = 3_600_000_000
#: Decimal digits of precision the histograms keep (0.1% of each value).
SIGNIFICANT_FIGURES = 3
#: Percentiles in every summary, as (label, percentile).
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))

# Separates scenario and step in the keys of encoded reports (neither contains it: class and step names).
_KEY_SEPARATOR = "\x1f"


def new_histogram() -> HdrHistogram:
    """An empty histogram with this module's range and precision (every histogram merged must share them)."""
    return HdrHistogram(1, HIGHEST_MICROS, SIGNIFICANT_FIGURES)


def fine_bucket(response_time: float) -> float:
    """Response-time bucketing for Locust's own statistics, with two significant digits below 100 ms.

    Locust calls ``locust.stats.bucket_response_time`` for every request to pick the key it counts the response
    time under; its default rounds below 100 ms to whole milliseconds. This keeps 1 µs steps below 0.1 ms, 10 µs
    below 1 ms and 0.1 ms below 10 ms (about 90 keys per decade, so the dictionaries workers send stay small), and
    rounds like Locust above that.
    """
    if response_time < 0.1:
        return round(response_time, 3)
    if response_time < 1:
        return round(response_time, 2)
    if response_time < 10:
        return round(response_time, 1)
    if response_time < 100:
        return round(response_time)
    if response_time < 1000:
        return int(round(response_time, -1))
    if response_time < 10000:
        return int(round(response_time, -2))
    return int(round(response_time, -3))


@dataclass(frozen=True)
class LatencyRow:
    """One line of the summary: the latency distribution of one step of one scenario, in microseconds."""

    scenario: str
    step: str
    #: Successful requests measured.
    count: int
    #: Failed requests (not in the percentiles).
    failures: int
    min: int
    mean: float
    p50: int
    p90: int
    p99: int
    p99_9: int
    max: int


class _Step:
    """Counts for one (scenario, step): pending µs → count, plus everything folded so far."""

    __slots__ = ("failures", "histogram", "pending")

    def __init__(self) -> None:
        self.pending: defaultdict[int, int] = defaultdict(int)
        self.histogram = new_histogram()
        self.failures = 0

    def fold(self) -> HdrHistogram:
        pending = self.pending
        if pending:
            record = self.histogram.record_value
            for micros, count in pending.items():
                record(min(max(micros, 1), HIGHEST_MICROS), count)
            pending.clear()
        return self.histogram


class LatencyRecorder:
    """Latency histograms keyed by (scenario, step), e.g. ``("ChatUser", "echo")``.

    The hot path is :meth:`counter`: ask once for a step's ``dict``, then do ``counts[micros] += 1`` per request.
    """

    def __init__(self) -> None:
        self._steps: dict[tuple[str, str], _Step] = {}

    def _step(self, scenario: str, step: str) -> _Step:
        key = (scenario, step)
        entry = self._steps.get(key)
        if entry is None:
            entry = self._steps[key] = _Step()
        return entry

    def counter(self, scenario: str, step: str) -> defaultdict[int, int]:
        """The live ``{microseconds: count}`` dict for one step; it stays valid across :meth:`reset`."""
        return self._step(scenario, step).pending

    def record(self, scenario: str, step: str, micros: int) -> None:
        """Record one successful request that took ``micros`` µs."""
        self._step(scenario, step).pending[micros] += 1

    def record_failure(self, scenario: str, step: str) -> None:
        """Count one failed request (failures stay out of the latency percentiles)."""
        self._step(scenario, step).failures += 1

    def reset(self) -> None:
        """Forget everything recorded (a new test started). Dicts from :meth:`counter` stay valid."""
        for entry in self._steps.values():
            entry.pending.clear()
            entry.histogram.reset()
            entry.failures = 0

    def take_report(self) -> dict[str, list[object]]:
        """Everything recorded since the last call, encoded for the trip to the master, then forgotten.

        Returns ``{"scenario<US>step": [encoded histogram (str), failures]}`` for steps with news (msgpack-safe).
        """
        report: dict[str, list[object]] = {}
        for (scenario, step), entry in self._steps.items():
            histogram = entry.fold()
            if histogram.get_total_count() == 0 and entry.failures == 0:
                continue
            encoded = histogram.encode()
            report[f"{scenario}{_KEY_SEPARATOR}{step}"] = [
                encoded.decode("ascii") if isinstance(encoded, bytes) else encoded,
                entry.failures,
            ]
            histogram.reset()
            entry.failures = 0
        return report

    def add_report(self, report: Mapping[str, list[object]]) -> None:
        """Merge a report from :meth:`take_report` (another process's counts) into this recorder."""
        for key, (encoded, failures) in report.items():
            scenario, _, step = key.partition(_KEY_SEPARATOR)
            entry = self._step(scenario, step)
            if not isinstance(encoded, str) or not isinstance(failures, int):
                raise ValueError(f"malformed latency report for {key!r}")
            histogram = HdrHistogram.decode(encoded)
            if histogram.get_total_count():
                entry.histogram.add(histogram)
            entry.failures += failures

    def histogram(self, scenario: str, step: str) -> HdrHistogram:
        """The merged histogram of one step (folding in pending counts)."""
        return self._step(scenario, step).fold()

    def histograms(self) -> list[tuple[str, str, HdrHistogram]]:
        """``(scenario, step, merged histogram)`` for every step with a successful request, in order of first
        appearance (the histograms are the recorder's own: read them, do not change them)."""
        folded = [(scenario, step, entry.fold()) for (scenario, step), entry in self._steps.items()]
        return [item for item in folded if item[2].get_total_count()]

    def rows(self) -> list[LatencyRow]:
        """The summary, one row per (scenario, step) seen, grouped by scenario, in order of first appearance."""
        rows = []
        for (scenario, step), entry in self._steps.items():
            histogram = entry.fold()
            count = histogram.get_total_count()
            if count == 0 and entry.failures == 0:
                continue
            mean, values = _distribution(histogram)
            rows.append(
                LatencyRow(
                    scenario=scenario,
                    step=step,
                    count=count,
                    failures=entry.failures,
                    min=histogram.get_min_value() if count else 0,
                    mean=round(mean, 1),
                    p50=values.get(50.0, 0),
                    p90=values.get(90.0, 0),
                    p99=values.get(99.0, 0),
                    p99_9=values.get(99.9, 0),
                    max=histogram.get_max_value() if count else 0,
                )
            )
        order = {scenario: index for index, scenario in enumerate(dict.fromkeys(r.scenario for r in rows))}
        return sorted(rows, key=lambda r: order[r.scenario])


def _distribution(histogram: HdrHistogram) -> tuple[float, dict[float, int]]:
    """Mean and :data:`PERCENTILES` of a histogram, in one pass over its non-empty buckets.

    Same results as HdrHistogram's own ``get_mean_value`` / ``get_percentile_to_value_dict``, which walk every one
    of the ~22,000 buckets (1 µs to 1 hour) in Python per call: seconds for a summary of twenty rows.
    """
    total = histogram.get_total_count()
    if not total:
        return 0.0, {}
    value_at = histogram.get_value_from_index
    lowest, highest = histogram.get_lowest_equivalent_value, histogram.get_highest_equivalent_value
    targets = sorted((histogram.get_target_count_at_percentile(p), p) for _label, p in PERCENTILES)
    values: dict[float, int] = {}
    weighted = 0
    seen = 0
    for index, count in enumerate(histogram.counts):
        if not count:
            continue
        value = value_at(index)
        low, high = lowest(value), highest(value)
        weighted += count * (low + ((high + 1 - low) >> 1))
        seen += count
        while targets and seen >= targets[0][0]:
            values[targets.pop(0)[1]] = high
    return weighted / total, values


_COLUMNS = ("count", "failures", "min", "mean", "p50", "p90", "p99", "p99_9", "max")
_HEADERS = ("# ok", "# fails", "min", "mean", "p50", "p90", "p99", "p99.9", "max")


def format_summary(rows: Iterable[LatencyRow]) -> str:
    """The µs summary table printed at the end of a run."""
    rows = list(rows)
    if not rows:
        return "Latency (µs): no requests recorded"
    scenario_width = max(8, *(len(r.scenario) for r in rows))
    step_width = max(6, *(len(r.step) for r in rows))
    lines = [
        "Latency in µs (HdrHistogram, 3 significant digits; failures excluded from the percentiles)",
        f"{'Scenario':<{scenario_width}} {'Step':<{step_width}} " + " ".join(f"{h:>9}" for h in _HEADERS),
        "-" * (scenario_width + step_width + 2 + 10 * len(_HEADERS)),
    ]
    for row in rows:
        cells = []
        for column in _COLUMNS:
            value = getattr(row, column)
            cells.append(f"{value:>9.1f}" if isinstance(value, float) else f"{_grouped(value):>9}")
        lines.append(f"{row.scenario:<{scenario_width}} {row.step:<{step_width}} " + " ".join(cells))
    return "\n".join(lines)


def _grouped(value: int) -> str:
    # Past 9 digits the column would overflow: show large values in seconds instead.
    return str(value) if value < 1_000_000_000 else f"{value / 1e6:.0f}s"


def write_csv(rows: Iterable[LatencyRow], path: Path) -> None:
    """One row per (scenario, step); latency columns in µs."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["scenario", "step", *(f"{c}_us" if c not in ("count", "failures") else c for c in _COLUMNS)])
        for row in rows:
            writer.writerow([row.scenario, row.step, *(getattr(row, c) for c in _COLUMNS)])


def write_json(rows: Iterable[LatencyRow], path: Path) -> None:
    """``{"unit": "us", "rows": [...]}`` with the same fields as the CSV."""
    data = {"unit": "us", "rows": [asdict(row) for row in rows]}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


_NOT_IN_TAG = re.compile(r"[^A-Za-z0-9_.-]")


def hlog_tag(scenario: str, step: str) -> str:
    """The ``.hlog`` tag of one step: ``ChatUser.echo``. A tag ends at the first comma and must hold no blanks,
    so anything but letters, digits, ``_``, ``.`` and ``-`` (a custom step's name may have them) becomes ``_``."""
    return _NOT_IN_TAG.sub("_", f"{scenario}.{step}")


def write_hlog(histograms: Iterable[tuple[str, str, HdrHistogram]], path: Path, start: float, end: float) -> None:
    """Write an HdrHistogram log (format 1.2, what HistogramLogAnalyzer and ``hdrh.log.HistogramLogReader`` read):
    one interval per (scenario, step), tagged :func:`hlog_tag`, spanning the run from ``start`` to ``end`` (seconds
    since the epoch, written as absolute timestamps). Values are microseconds; the interval's max column is in
    milliseconds."""
    with path.open("w", encoding="utf-8") as out:
        writer = HistogramLogWriter(out)
        writer.output_comment("[geventchat loadtest latency: values in microseconds, one interval per SCENARIO.STEP]")
        writer.output_log_format_version()
        # hdrh's own output_start_time() formats the time with a method datetime does not have: write the line here.
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
        # "%f" as the writer formats the intervals: the reader skips an interval that starts before StartTime.
        writer.output_comment(f"[StartTime: {start:f} (seconds since epoch), {stamp}]")
        writer.output_legend()
        for scenario, step, histogram in histograms:
            # The format puts "Tag=NAME," first on an interval's line; hdrh's writer has no tag support, so the
            # prefix goes out just before the line it writes (its reader parses it back into the histogram's tag).
            out.write(f"Tag={hlog_tag(scenario, step)},")
            writer.output_interval_histogram(
                histogram, start_time_stamp_sec=start, end_time_stamp_sec=max(end, start), max_value_unit_ratio=1000.0
            )


def micros(seconds: float) -> int:
    """Seconds as a whole number of microseconds, rounded to nearest."""
    return math.floor(seconds * 1_000_000 + 0.5)
