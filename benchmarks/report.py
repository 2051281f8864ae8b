"""Turns raw benchmark results into ``benchmarks/results/<date>.md`` and PNG plots: medians, ratios, targets."""

from __future__ import annotations

import os
import platform
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import fanout_report

#: A figure is marked as limited by the load generator when the generator used at least this share of its core
#: and more CPU than the server did.
GENERATOR_BOUND = 0.85

BASELINE = "gevent-minimal"
GEVENTCHAT = "geventchat"


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
        gen = self.median(server, mode, key, "loadgen_cpu")
        srv = self.median(server, mode, key, "server_cpu")
        return gen is not None and gen >= GENERATOR_BOUND and (srv is None or gen >= srv)

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
    lines = [
        f"# geventchat benchmark, {title}",
        "",
        f"Machine: {machine()}. Server pinned to CPU 0, load generator (uvloop, `asyncio.Protocol`) on CPU 1;",
        f"32-byte lines, one request in flight per connection; {s['duration']:g} s measured after"
        f" {s['warmup']:g} s warm-up; medians of {s['repeats']} interleaved run(s).",
        "The machine is shared with other work: compare ratios within this report, not absolutes across reports.",
        f"† = limited by the load generator (it used ≥{GENERATOR_BOUND:.0%} of its core and more CPU than the"
        " server): the server may be faster than shown.",
        "",
    ]
    lines += _targets(r)
    lines += ["", "## Replies/s and latency vs concurrent connections", ""]
    header = "| server | " + " | ".join(f"replies/s @{n}" for n in conns)
    header += " | " + " | ".join(f"p50 / p99 ms @{n}" for n in conns) + " | server CPU µs/reply @100 |"
    lines += [header, "|---|" + "---:|" * (2 * len(conns) + 1)]
    for server in r.servers:
        if r.median(server, "echo", conns[0], "replies_per_s") is None:
            continue
        row = [server]
        for n in conns:
            cell = _fmt(r.median(server, "echo", n, "replies_per_s"), mark=r.generator_bound(server, "echo", n))
            greeted = r.median(server, "echo", n, "greeted")
            if greeted is not None and greeted < n:
                cell += f" ({greeted:.0f} of {n} served)"
            row.append(cell)
        for n in conns:
            p50, p99 = r.median(server, "echo", n, "p50"), r.median(server, "echo", n, "p99")
            row.append(f"{_fmt(p50, 2)} / {_fmt(p99, 2)}")
        cpu, rate = r.median(server, "echo", 100, "server_cpu"), r.median(server, "echo", 100, "replies_per_s")
        row.append(_fmt(cpu / rate * 1e6 if cpu and rate else None, 1))
        lines.append("| " + " | ".join(row) + " |")
    lines += _generator_ceiling(r)
    lines += ["", f"## Latency at {s['rate_connections']} connections, fixed offered load", ""]
    lines += [
        f"Offered load = {s['rate_fraction']:.0%} of the same server's closed-loop maximum at"
        f" {s['rate_connections']} connections in the same run; latency counted from when each request was due.",
        "",
        "Server CPU is the share of its core the server used: well below 100% while latency grows means the server"
        " was waiting for its turn on a core shared with other work, not working.",
        "",
        "| server | offered/s | answered/s | p50 ms | p99 ms | p99.9 ms | server CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    n = s["rate_connections"]
    for server in r.servers:
        if r.median(server, "rate", n, "p99") is None:
            continue
        lines.append(
            f"| {server} | {_fmt(r.median(server, 'rate', n, 'offered_per_s'))} | "
            f"{_fmt(r.median(server, 'rate', n, 'replies_per_s'))} | {_fmt(r.median(server, 'rate', n, 'p50'), 2)} | "
            f"{_fmt(r.median(server, 'rate', n, 'p99'), 2)} | {_fmt(r.median(server, 'rate', n, 'p99.9'), 2)} | "
            f"{_fmt((r.median(server, 'rate', n, 'server_cpu') or 0) * 100)}% |"
        )
    c = s["churn_concurrency"]
    lines += [
        "",
        f"## Connection churn at {c} concurrent",
        "",
        "One cycle: connect, greeting, timeout line, one echo, `:q`, its echo, close. A cycle costs the Python"
        " generator about as much CPU as the server, so on this machine cycles/s is often the generator's (or the"
        " shared machine's) limit; server CPU per cycle is the server's own cost.",
        "",
        "| server | cycles/s | cycle p99 ms | errors | server CPU µs/cycle | generator CPU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for server in r.servers:
        rate = r.median(server, "churn", c, "cycles_per_s")
        if rate is None:
            continue
        marked = _fmt(rate, mark=r.generator_bound(server, "churn", c))
        p99, errors = r.median(server, "churn", c, "p99"), r.median(server, "churn", c, "errors")
        cpu, gen = r.median(server, "churn", c, "server_cpu"), r.median(server, "churn", c, "loadgen_cpu")
        per_cycle = _fmt(cpu / rate * 1e6 if cpu and rate else None)
        lines.append(
            f"| {server} | {marked} | {_fmt(p99, 1)} | {_fmt(errors)} | {per_cycle} | {_fmt((gen or 0) * 100)}% |"
        )
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
    fastest = "uvloop-protocol"
    rate = r.median(fastest, "echo", 100, "replies_per_s")
    if rate is None:
        return []
    gen = r.median(fastest, "echo", 100, "loadgen_cpu") or 0.0
    srv = r.median(fastest, "echo", 100, "server_cpu") or 0.0
    if gen >= GENERATOR_BOUND:
        verdict = "the generator was the limit there"
    elif srv >= GENERATOR_BOUND:
        verdict = "the server was the limit there"
    else:
        verdict = "neither had its core to itself (other work on the machine) and they waited on each other"
    ceiling = f" At {gen / rate * 1e6:.1f} µs of generator CPU per reply, a whole core drives about" if gen else ""
    ceiling += f" {rate / gen:,.0f} replies/s." if gen else ""
    return [
        "",
        f"Load generator ceiling: against the fastest reference server ({fastest}, 100 connections) it drove"
        f" {rate:,.0f} replies/s using {gen:.0%} of its core while the server used {srv:.0%} of its own;"
        f" {verdict}.{ceiling}",
    ]


def _targets(r: Results) -> list[str]:
    s = r.settings
    ours, base = GEVENTCHAT, BASELINE
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
        lines.append(f"| {name} | {_fmt(value, 2)}{unit}{each} | {verdict} |")

    vs_min = r.paired_ratio(ours, base, "echo", 100, "replies_per_s")
    spread = r.paired_ratios(ours, base, "echo", 100, "replies_per_s")
    row("geventchat @100 ≥ 1.2x minimal gevent", vs_min, None if vs_min is None else vs_min >= 1.2, "x", spread)
    vs_uv = r.paired_ratio(ours, "uvloop-streams", "echo", 100, "replies_per_s")
    spread = r.paired_ratios(ours, "uvloop-streams", "echo", 100, "replies_per_s")
    row("geventchat @100 ≥ 1.0x asyncio streams on uvloop", vs_uv, None if vs_uv is None else vs_uv >= 1.0, "x", spread)

    def cpu_per_reply(server: str) -> float | None:
        cpu, rate = r.median(server, "echo", 100, "server_cpu"), r.median(server, "echo", 100, "replies_per_s")
        return cpu / rate if cpu and rate else None

    ours_cpu = cpu_per_reply(ours)
    for other in (base, "uvloop-streams"):
        ratio = _ratio(cpu_per_reply(other), ours_cpu)
        if ratio is not None:
            row(f"(context) server CPU per reply @100, {other} / geventchat", ratio, None, "x")
    kb = r.median(ours, "hold", 0, "bytes_per_connection")
    kb = kb / 1024 if kb is not None else None
    row("memory per idle connection ≤ 8 KB", kb, None if kb is None else kb <= 8, " KB")
    c = s["churn_concurrency"]
    churn = r.paired_ratio(ours, base, "churn", c, "cycles_per_s")
    spread = r.paired_ratios(ours, base, "churn", c, "cycles_per_s")
    row("churn ≥ 1.5x minimal gevent", churn, None if churn is None else churn >= 1.5, "x", spread)

    def cpu_per_cycle(server: str) -> float | None:
        cpu, rate = r.median(server, "churn", c, "server_cpu"), r.median(server, "churn", c, "cycles_per_s")
        return cpu / rate if cpu and rate else None

    ratio = _ratio(cpu_per_cycle(base), cpu_per_cycle(ours))
    if ratio is not None:
        row(f"(context) server CPU per churn cycle, {base} / geventchat", ratio, None, "x")
    p99 = r.median(ours, "rate", s["rate_connections"], "p99")
    row(
        f"p99 at {s['rate_connections']} connections, {s['rate_fraction']:.0%} load < 5 ms",
        p99,
        None if p99 is None else p99 < 5,
        " ms",
    )
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
