"""Turns raw benchmark results into ``benchmarks/results/<date>.md`` and PNG plots: medians, ratios, targets."""

from __future__ import annotations

import os
import platform
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import fanout_report
from .saturation import SATURATED, WAITED, saturation

GENERATOR_BOUND = SATURATED  # the round-1 name

BASELINE = "gevent-minimal"
GEVENTCHAT = "geventchat"
UVLOOP = "uvloop-protocol"
C_ECHO = "c-epoll"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


class Results:
    """Medians over repeats, keyed by server, mode and connection count."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.settings = data["settings"]
        self.servers: list[str] = []
        self._groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
        for record in data["results"]:
            server = record["server"]
            if server not in self.servers:
                self.servers.append(server)
            # Hold counts differ per server (a process per client holds hundreds, not thousands): one row each.
            key = 0 if record["mode"] in ("hold", "gc") else record.get("connections", record.get("concurrency", 0))
            self._groups[(server, record["mode"], key)].append(record)

    def median(self, server: str, mode: str, key: int, field: str) -> float | None:
        values = [r[field] for r in self._groups.get((server, mode, key), []) if field in r]
        return statistics.median(values) if values else None

    def paired_ratios(self, a: str, b: str, mode: str, key: int, field: str) -> list[float]:
        """``a``'s figure divided by ``b``'s from the same repeat (measured back to back), one per repeat."""
        by_repeat = {rec["repeat"]: rec[field] for rec in self._groups.get((b, mode, key), []) if rec.get(field)}
        return [
            rec[field] / by_repeat[rec["repeat"]]
            for rec in self._groups.get((a, mode, key), [])
            if field in rec and rec["repeat"] in by_repeat
        ]

    def paired_ratio(self, a: str, b: str, mode: str, key: int, field: str) -> float | None:
        """Median of :meth:`paired_ratios`."""
        ratios = self.paired_ratios(a, b, mode, key, field)
        return statistics.median(ratios) if ratios else None

    def runs(self, server: str, mode: str, key: int) -> int:
        return len(self._groups.get((server, mode, key), []))

    def generator_bound(self, server: str, mode: str, key: int) -> bool:
        return self.saturated(server, mode, key) == "generator saturated"

    def saturated(self, server: str, mode: str, key: int) -> str:
        """:func:`saturation` of the medians of one row."""
        m = self.median
        cores = self.server_cores(server, mode, key)
        srv, gen = m(server, mode, key, "server_cpu"), m(server, mode, key, "loadgen_cpu")
        return saturation(srv, cores, gen, m(server, mode, key, "server_wait"), m(server, mode, key, "loadgen_wait"))

    def server_cores(self, server: str, mode: str, key: int) -> float:
        """The cores the server could use: 1 when pinned; unpinned, the machine's, but no more than its worker
        processes (one ``--workers 1`` process busy on one of two cores is saturated, not at 50%)."""
        cores = self.median(server, mode, key, "server_cores") or 1.0
        workers = self.median(server, mode, key, "workers")
        return min(cores, workers) if workers else cores

    def cpu_cells(self, server: str, mode: str, key: int) -> str:
        """``server CPU % | generator CPU % | saturated`` cells; the server's share is of its cores; a run-queue
        wait is shown as ``(+N% wait)``."""
        cores = self.server_cores(server, mode, key)

        def share(cpu_field: str, wait_field: str, divisor: float) -> str:
            cpu, wait = self.median(server, mode, key, cpu_field), self.median(server, mode, key, wait_field)
            if cpu is None:
                return "-"
            text = f"{cpu / divisor:.0%}" + (f" of {divisor:.0f} cores" if divisor > 1 else "")
            return text + (f" (+{wait / divisor:.0%} wait)" if wait is not None else "")

        srv_text = share("server_cpu", "server_wait", cores)
        gen_text = share("loadgen_cpu", "loadgen_wait", 1.0)
        return f"{srv_text} | {gen_text} | {self.saturated(server, mode, key)}"

    def per_unit_us(self, server: str, mode: str, key: int, rate_field: str) -> float | None:
        """Server CPU µs per reply (or cycle): its CPU share over the rate, medians of the row."""
        cpu, rate = self.median(server, mode, key, "server_cpu"), self.median(server, mode, key, rate_field)
        return cpu / rate * 1e6 if cpu and rate else None

    def errors(self) -> list[dict[str, Any]]:
        return [r for group in self._groups.values() for r in group if r["mode"] == "error"]


def _fmt(value: float | None, digits: int = 0, mark: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:,.{digits}f}"
    return text + " †" if mark else text


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def render(data: dict[str, Any], title: str, plots: list[str]) -> str:
    r = Results(data)
    s = r.settings
    conns = s["connections"]
    generator = {
        "c": "the C epoll load generator (`benchmarks/c/loadgen.c`, one thread)",
        "python": "the Python load generator (uvloop, `asyncio.Protocol`, `benchmarks/loadgen.py`)",
    }.get(s.get("generator", "python"), s.get("generator", "?"))
    lines = [
        f"# geventchat benchmark, {title}",
        "",
        f"Machine: {machine()}. Server pinned to CPU 0, load generator on CPU 1: {generator};",
        f"32-byte lines, one request in flight per connection; {s['duration']:g} s measured after"
        f" {s['warmup']:g} s warm-up; medians of {s['repeats']} interleaved run(s).",
        "The machine is shared with other work: compare ratios within this report, not absolutes across reports.",
        "",
        "Who saturated: every row gives the server's CPU (share of the cores it may use: 1 when pinned) and the"
        f" generator's (share of its one core) over the measured window, each with the time it waited on a run"
        f" queue for a core (+N% wait). A side at ≥{SATURATED:.0%} CPU is marked saturated (when both are, the"
        f" larger share); below that on both sides, the row is 'neither (waited for a core)' when either waited"
        f" ≥{WAITED:.0%} (other work on the machine had the cores) and 'neither (latency-bound)' otherwise (each"
        " waited on the other). Only 'server saturated' rows measure the server's own limit; † marks a 'generator"
        " saturated' figure (the server may be faster).",
        "",
    ]
    lines += _targets(r)
    lines += [
        "",
        "## Replies/s and latency vs concurrent connections",
        "",
        "| server | connections | replies/s | p50 / p99 ms | errors | server CPU µs/reply | server CPU | generator CPU"
        " | saturated |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for server in r.servers:
        for n in conns:
            rate = r.median(server, "echo", n, "replies_per_s")
            if rate is None:
                continue
            cell = _fmt(rate, mark=r.generator_bound(server, "echo", n))
            greeted = r.median(server, "echo", n, "greeted")
            if greeted is not None and greeted < n:
                cell += f" ({greeted:.0f} of {n} served)"
            p50, p99 = r.median(server, "echo", n, "p50"), r.median(server, "echo", n, "p99")
            lines.append(
                f"| {server} | {n:,} | {cell} | {_fmt(p50, 2)} / {_fmt(p99, 2)} | "
                f"{_fmt(r.median(server, 'echo', n, 'errors'))} | "
                f"{_fmt(r.per_unit_us(server, 'echo', n, 'replies_per_s'), 1)} | {r.cpu_cells(server, 'echo', n)} |"
            )
    lines += _generator_ceiling(r)
    n = s["rate_connections"]
    basis = s.get("rate_basis")
    offered = f"{s['rate_fraction']:.0%} of {basis}'s" if basis else f"{s['rate_fraction']:.0%} of the same server's"
    lines += [
        "",
        f"## Latency at {n} connections, fixed offered load",
        "",
        f"Offered load = {offered} closed-loop maximum at {n} connections in the same run (the same absolute rate"
        " for every server; a server is offered its own maximum's share only when that server was not measured);"
        " latency counted from when each request was due, so queueing behind a stall counts (no coordinated"
        " omission).",
        "",
        "| server | offered/s | answered/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU | generator CPU"
        " | saturated |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for server in r.servers:
        if r.median(server, "rate", n, "p99") is None:
            continue
        lines.append(
            f"| {server} | {_fmt(r.median(server, 'rate', n, 'offered_per_s'))} | "
            f"{_fmt(r.median(server, 'rate', n, 'replies_per_s'))} | {_fmt(r.median(server, 'rate', n, 'p50'), 2)} | "
            f"{_fmt(r.median(server, 'rate', n, 'p99'), 2)} | {_fmt(r.median(server, 'rate', n, 'p99.9'), 2)} | "
            f"{_fmt(r.median(server, 'rate', n, 'errors'))} | {r.cpu_cells(server, 'rate', n)} |"
        )
    c = s["churn_concurrency"]
    lines += [
        "",
        f"## Connection churn at {c} concurrent",
        "",
        "One cycle: connect, greeting, timeout line, one echo, `:q`, its echo, the server's close. Server CPU per"
        " cycle is the server's own cost, whoever saturated.",
        "",
        "| server | cycles/s | cycle p99 ms | errors | server CPU µs/cycle | server CPU | generator CPU | saturated |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for server in r.servers:
        rate = r.median(server, "churn", c, "cycles_per_s")
        if rate is None:
            continue
        marked = _fmt(rate, mark=r.generator_bound(server, "churn", c))
        p99, errors = r.median(server, "churn", c, "p99"), r.median(server, "churn", c, "errors")
        per_cycle = _fmt(r.per_unit_us(server, "churn", c, "cycles_per_s"))
        cells = r.cpu_cells(server, "churn", c)
        lines.append(f"| {server} | {marked} | {_fmt(p99, 1)} | {_fmt(errors)} | {per_cycle} | {cells} |")
    lines += _workers_section(r)
    lines += [
        "",
        f"## Idle connections held ({s['hold']:,} unless the opened column says otherwise)",
        "",
        "Memory per connection = the server's RSS (PSS for forking servers) after opening them, minus before,"
        " divided by the connections. Handshake = connect until the greeting arrives, 10 opening at once;"
        " its p99 and max are where garbage-collector pauses show. Answered = connections that echoed a line after"
        " the hold.",
        "",
        "| server | opened | KB per idle connection | seconds to open | handshake p50 / p99 / max ms | answered |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for server in r.servers:
        opened = r.median(server, "hold", 0, "opened")
        if opened is None:
            continue
        kb = r.median(server, "hold", 0, "bytes_per_connection")
        lines.append(
            f"| {server} | {_fmt(opened)} | {_fmt(kb / 1024 if kb is not None else None, 1)} | "
            f"{_fmt(r.median(server, 'hold', 0, 'open_seconds'), 1)} | "
            f"{_fmt(r.median(server, 'hold', 0, 'handshake_p50'), 2)} / "
            f"{_fmt(r.median(server, 'hold', 0, 'handshake_p99'), 1)} / "
            f"{_fmt(r.median(server, 'hold', 0, 'handshake_max'), 1)} | "
            f"{_fmt(r.median(server, 'hold', 0, 'answered'))} |"
        )
    lines += _gc_section(r)
    lines += _hold_many(r)
    for error in r.errors():
        lines.append(f"\nRun {error['repeat']} of {error['server']} failed: {error['error']}")
    if "fanout" in data:  # the fan-out phase renders itself (benchmarks/fanout_report.py)
        lines += ["", *fanout_report.section(data["fanout"], plots)]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots if not p.endswith("-fanout.png")]
    return "\n".join(lines) + "\n"


def _workers_section(r: Results) -> list[str]:
    names = [
        name for name in r.servers if any(r.runs(name, "workers", n) for n in r.settings.get("workers_connections", []))
    ]
    if not names:
        return []
    lines = [
        "",
        "## `--workers` scaling: geventchat --workers 1 vs 2, generator sharing the cores",
        "",
        "Nothing is pinned: with two cores the generator cannot have one of its own, so replies/s says little about"
        " the workers; server CPU µs per reply (the whole process tree's CPU over its replies) is the figure to"
        " compare. Server CPU is the share of the cores its workers can use: one per worker process, at most the"
        " machine's two (the supervisor's own CPU, next to nothing, is counted in the tree).",
        "",
        "| server | connections | replies/s | server CPU µs/reply | p99 ms | server CPU | generator CPU | saturated |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in names:
        for n in r.settings["workers_connections"]:
            rate = r.median(name, "workers", n, "replies_per_s")
            if rate is None:
                continue
            lines.append(
                f"| {name} | {n:,} | {_fmt(rate)} | {_fmt(r.per_unit_us(name, 'workers', n, 'replies_per_s'), 1)} | "
                f"{_fmt(r.median(name, 'workers', n, 'p99'), 2)} | {r.cpu_cells(name, 'workers', n)} |"
            )
    return lines


def _gc_section(r: Results) -> list[str]:
    names = [n for n in ("geventchat gc off", "geventchat gc on") if r.runs(n, "gc", 0)]
    if not names:
        return []
    lines = [
        "",
        f"## Garbage-collector pauses while geventchat takes on {r.settings['hold']:,} connections",
        "",
        "Timed inside the server (`gc.callbacks`, `benchmarks/gcpause.py`) while the clients open 10 at a time;"
        " `off` is CPython's defaults (`--gc-tuning off`), `on` is geventchat's default (`gc.freeze()` after"
        " start-up, full collections rare).",
        "",
        "| --gc-tuning | collections gen 0 / 1 / 2 | longest full collection ms | longest pause ms | total paused ms"
        " | handshake p99 / max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        recs = [rec for rec in r._groups[(name, "gc", 0)] if "collections" in rec]
        if not recs:
            continue
        counts = " / ".join(f"{statistics.median(rec['collections'][g] for rec in recs):.0f}" for g in ("0", "1", "2"))
        lines.append(
            f"| {name.rsplit(' ', 1)[1]} | {counts} | {_fmt(r.median(name, 'gc', 0, 'full_collection_max_ms'), 1)}"
            f" | {_fmt(r.median(name, 'gc', 0, 'pause_max_ms'), 1)} | {_fmt(r.median(name, 'gc', 0, 'pause_total_ms'))}"
            f" | {_fmt(r.median(name, 'gc', 0, 'handshake_p99'), 1)}"
            f" / {_fmt(r.median(name, 'gc', 0, 'handshake_max'), 1)} |"
        )
    return lines


def _hold_many(r: Results) -> list[str]:
    rows = [rec for group in r._groups.values() for rec in group if rec["mode"] == "hold-many"]
    if not rows:
        return []
    lines = [
        "",
        "## Many idle connections: geventchat with workers",
        "",
        "Pre-forked workers sharing the port (SO_REUSEPORT), not pinned; the load generator spread over"
        " processes and loopback source addresses. Memory = PSS summed over the supervisor and workers.",
        "",
        "| server | asked | opened | seconds to open | memory after | KB per connection | answered after the hold |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rec in rows:
        lines.append(
            f"| {rec['server']} | {rec['connections']:,} | {rec['opened']:,} | {rec['open_seconds']:.1f} | "
            f"{rec['memory_after'] / 2**20:,.0f} MiB | {rec['bytes_per_connection'] / 1024:.1f} | "
            f"{rec['answered']:,} |"
        )
    return lines


def _generator_ceiling(r: Results) -> list[str]:
    fastest = next((name for name in (C_ECHO, UVLOOP) if r.median(name, "echo", 100, "replies_per_s")), None)
    if fastest is None:
        return []
    rate = r.median(fastest, "echo", 100, "replies_per_s") or 0.0
    gen = r.median(fastest, "echo", 100, "loadgen_cpu") or 0.0
    srv = r.median(fastest, "echo", 100, "server_cpu") or 0.0
    verdict = {
        "generator saturated": "the generator was the limit there",
        "server saturated": "the server was the limit there",
        "neither (waited for a core)": "neither was: other work on the machine had their cores part of the time",
    }.get(r.saturated(fastest, "echo", 100), "neither was: they waited on each other")
    ceiling = f" At {gen / rate * 1e6:.1f} µs of generator CPU per reply, a whole core drives about" if gen else ""
    ceiling += f" {rate / gen:,.0f} replies/s." if gen else ""
    return [
        "",
        f"Load generator ceiling: against the fastest server measured ({fastest}, 100 connections) it drove"
        f" {rate:,.0f} replies/s using {gen:.0%} of its core while the server used {srv:.0%} of its own;"
        f" {verdict}.{ceiling}",
    ]


def _targets(r: Results) -> list[str]:
    s = r.settings
    ours = GEVENTCHAT
    lines = [
        "## Targets (ratios measured in this run)",
        "",
        "Ratios are medians over repeats of the two servers' figures measured back to back in the same repeat.",
        "",
        "| target | measured | |",
        "|---|---:|---|",
    ]

    def row(name: str, value: float | None, ok: bool | None, unit: str = "", spread: list[float] | None = None) -> None:
        verdict = "-" if ok is None else ("hit" if ok else "missed")
        each = f" (each repeat: {', '.join(f'{v:.2f}' for v in spread)})" if spread and len(spread) > 1 else ""
        shown = f"{_fmt(value, 2)}{unit}" if value is not None else "-"
        lines.append(f"| {name} | {shown}{each} | {verdict} |")

    for n, goal in ((100, 0.8), (1000, 1.0)):
        ratio = r.paired_ratio(ours, UVLOOP, "echo", n, "replies_per_s")
        spread = r.paired_ratios(ours, UVLOOP, "echo", n, "replies_per_s")
        row(f"geventchat @{n} ≥ {goal:.1f}x uvloop Protocol (replies/s)", ratio, _at_least(ratio, goal), "x", spread)
    c = s["churn_concurrency"]
    per_cycle = _ratio(
        r.per_unit_us(ours, "churn", c, "cycles_per_s"), r.per_unit_us(UVLOOP, "churn", c, "cycles_per_s")
    )
    row(
        f"server CPU per churn cycle @{c}, geventchat / uvloop Protocol ≤ 1.5x",
        per_cycle,
        None if per_cycle is None else per_cycle <= 1.5,
        "x",
    )
    n = s["rate_connections"]
    ours_p99, uv_p99 = r.median(ours, "rate", n, "p99"), r.median(UVLOOP, "rate", n, "p99")
    p99_ratio = _ratio(ours_p99, uv_p99)
    row(
        f"p99 at {n} connections and {s['rate_fraction']:.0%} of geventchat's maximum, geventchat / uvloop Protocol"
        " at the same offered load ≤ 1.0x",
        p99_ratio,
        None if p99_ratio is None else p99_ratio <= 1.0,
        "x",
    )
    row("(context) p99 there, geventchat ms / uvloop Protocol ms", ours_p99, None, f" / {_fmt(uv_p99, 2)}")
    kb = r.median(ours, "hold", 0, "bytes_per_connection")
    kb = kb / 1024 if kb is not None else None
    row("memory per idle connection ≤ 8.0 KB", kb, None if kb is None else kb <= 8.0, " KB")
    for other in (C_ECHO, UVLOOP, BASELINE):
        ratio = _ratio(
            r.per_unit_us(ours, "echo", 100, "replies_per_s"), r.per_unit_us(other, "echo", 100, "replies_per_s")
        )
        if ratio is not None:
            row(f"(context) server CPU per reply @100, geventchat / {other}", ratio, None, "x")
    vs_min = r.paired_ratio(ours, BASELINE, "echo", 100, "replies_per_s")
    row("(context) geventchat @100 / minimal gevent", vs_min, None, "x")
    before_pause = r.median(f"{ours} gc off", "gc", 0, "pause_max_ms")
    after_pause = r.median(f"{ours} gc on", "gc", 0, "pause_max_ms")
    if before_pause is not None and after_pause is not None:
        row(f"longest collector pause taking on {s['hold']:,}: CPython defaults (before)", before_pause, None, " ms")
        row(f"longest collector pause taking on {s['hold']:,}: --gc-tuning on (after)", after_pause, None, " ms")
    after = r.median(ours, "hold", 0, "handshake_p99")
    before = r.median(f"{ours} gc-untuned", "hold", 0, "handshake_p99")
    if before is not None:
        row(f"handshake p99 at {s['hold']:,} held, collector untuned (before)", before, None, " ms")
    row(f"handshake p99 at {s['hold']:,} held, gc.freeze + tuned thresholds (after)", after, None, " ms")
    return lines


def _at_least(value: float | None, goal: float) -> bool | None:
    return None if value is None else value >= goal


def plot(data: dict[str, Any], directory: Path, stem: str) -> list[str]:
    """Write the PNG plots; returns their file names (relative to ``directory``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = Results(data)
    conns = r.settings["connections"]
    names: list[str] = []
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for server in r.servers:
        rates = [r.median(server, "echo", n, "replies_per_s") for n in conns]
        p99s = [r.median(server, "echo", n, "p99") for n in conns]
        if all(v is None for v in rates):
            continue
        style = {"linewidth": 3} if server == GEVENTCHAT else {}
        measured = [(n, rate, p99) for n, rate, p99 in zip(conns, rates, p99s, strict=True) if rate is not None]
        xs = [n for n, _, _ in measured]
        left.plot(xs, [rate for _, rate, _ in measured], marker="o", label=server, **style)
        right.plot(xs, [p99 for _, _, p99 in measured], marker="o", label=server, **style)
    for axis, label in ((left, "replies/s"), (right, "p99 latency (ms)")):
        axis.set_xscale("log")
        axis.set_xlabel("concurrent connections")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    if left.get_legend_handles_labels()[1]:
        left.legend(fontsize=8)
    left.set_title("Throughput, one server core")
    right.set_title("p99 latency (closed loop)")
    fig.tight_layout()
    name = f"{stem}-throughput.png"
    fig.savefig(directory / name, dpi=90)
    plt.close(fig)
    names.append(name)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    h, c = r.settings["hold"], r.settings["churn_concurrency"]
    mem = [(s, r.median(s, "hold", 0, "bytes_per_connection")) for s in r.servers]
    mem = [(s, v / 1024) for s, v in mem if v is not None]
    churn = [(s, r.median(s, "churn", c, "cycles_per_s")) for s in r.servers]
    churn = [(s, v) for s, v in churn if v is not None]
    if mem:
        left.barh([s for s, _ in mem], [v for _, v in mem], color="tab:orange")
        left.set_xscale("log")  # a process per client is ~300x a greenlet: only a log scale shows both
        left.set_xlabel(f"KB per idle connection ({h:,} held unless the report says otherwise; log scale)")
        left.invert_yaxis()
    if churn:
        right.barh([s for s, _ in churn], [v for _, v in churn], color="tab:green")
        right.set_xlabel(f"churn cycles/s ({c} concurrent)")
        right.invert_yaxis()
    fig.tight_layout()
    name = f"{stem}-memory-churn.png"
    fig.savefig(directory / name, dpi=90)
    plt.close(fig)
    names.append(name)
    if "fanout" in data:
        names += fanout_report.plot(data["fanout"], directory, stem)
    return names
