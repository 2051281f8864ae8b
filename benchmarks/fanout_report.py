"""Renders the fan-out phase (:mod:`benchmarks.fanout`): a markdown section, the target check, and one plot.

Used on its own (``python -m benchmarks fanout`` writes ``<date>-fanout.md``) and by :mod:`benchmarks.report` when a
matrix run included the fan-out phase (its data under ``"fanout"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .fanout import (
    GEVENT_REFERENCE,
    GEVENTCHAT,
    REDIS_MODE,
    SATURATED,
    TARGET_PER_CORE,
    TARGET_RATIO,
    TARGET_SIZE,
    medians,
    saturated_side,
    target_check,
)


def _who_saturated(data: dict[str, Any], server: str, size: int, mode: str = "closed") -> str:
    sides = {
        saturated_side(r) for r in data["results"] if r["mode"] == mode and r["server"] == server and r["size"] == size
    }
    return ", ".join(sorted(sides)) or "-"


def section(data: dict[str, Any], plots: list[str], *, level: str = "##") -> list[str]:
    """The fan-out section's markdown lines (``level`` = the heading level of its title)."""
    s = data["settings"]
    table = medians(data)
    servers = [name for name in s["servers"] if any(key[0] == name for key in table)]
    lines = [
        f"{level} Chat fan-out: deliveries/s and server CPU per delivery",
        "",
        f"C epoll generator (`benchmarks/c/fanout_gen.c`), {s['members']:,} members in rooms of each size, one sender"
        f" per room, {s['window']} messages in flight per room (closed loop); {s['duration']:g} s measured after"
        f" {s['warmup']:g} s warm-up; medians of {s['repeats']} interleaved run(s). Load average at the end:"
        f" {data.get('loadavg', 'unknown')}. Single-process servers pinned to CPU 0 and the generator to CPU 1;"
        f" `{REDIS_MODE}` and its generator share both cores (compare its CPU per delivery, not its rate)."
        f" p99 is open loop at {s['rate_fraction']:.0%} of each server's own closed-loop maximum, from each"
        " message's due time, with the server CPU it cost per delivery there (less load means fewer lines per write"
        " to batch). A row is *generator saturated* when the generator's core was"
        f" ≥{SATURATED:.0%} busy and the server's was not.",
        "",
    ]
    lines += _target_lines(data)
    header = "| server | room size | deliveries/s | server CPU | µs server CPU / delivery | deliveries/s per core"
    header += " | generator CPU | Redis µs / delivery | p99 ms @50% | µs / delivery @50% | loss | who saturated |"
    lines += ["", header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for size in s["sizes"]:
        for server in servers:
            closed = table.get((server, size, "closed"))
            if closed is None:
                continue
            opened = table.get((server, size, "open"))
            per_core = 1e6 / closed["us_per_delivery"] if closed["us_per_delivery"] else 0.0
            redis = f"{closed['broker_us_per_delivery']:.2f}" if server == REDIS_MODE else "-"
            p99 = f"{opened['p99']:.2f}" if opened else "-"
            cost_at_half = f"{opened['us_per_delivery']:.2f}" if opened else "-"
            lines.append(
                f"| {server} | {size} | {closed['deliveries_per_s']:,.0f} | {closed['server_cpu']:.0%} | "
                f"{closed['us_per_delivery']:.2f} | {per_core:,.0f} | {closed['loadgen_cpu']:.0%} | {redis} | "
                f"{p99} | {cost_at_half} | {closed['loss']:.0f} | {_who_saturated(data, server, size)} |"
            )
    lines += _single_lines(data, servers)
    for record in data["results"]:
        if record["mode"] == "error":
            lines.append(f"\n{record['server']} (run {record.get('repeat', 0)}) failed: {record['error']}")
    lines += [f"\n![{name}]({name})" for name in plots if name.endswith("-fanout.png")]
    return lines


def _single_lines(data: dict[str, Any], servers: list[str]) -> list[str]:
    """The closed loop with one message in flight per room: nothing queues, so nothing batches."""
    table = medians(data)
    sizes = data["settings"].get("single_sizes", [])
    if not any((server, size, "single") in table for server in servers for size in sizes):
        return []
    lines = [
        "",
        "One message in flight per room (closed loop): how chat traffic usually arrives; no member's queue holds"
        " more than one line, so there is nothing to batch.",
        "",
    ]
    lines += _target_lines(data, "single")
    lines += [
        "",
        "| server | room size | deliveries/s | server CPU | µs server CPU / delivery | deliveries/s per core"
        " | generator CPU | Redis µs / delivery | loss | who saturated |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size in sizes:
        for server in servers:
            single = table.get((server, size, "single"))
            if single is None:
                continue
            per_core = 1e6 / single["us_per_delivery"] if single["us_per_delivery"] else 0.0
            redis = f"{single['broker_us_per_delivery']:.2f}" if server == REDIS_MODE else "-"
            lines.append(
                f"| {server} | {size} | {single['deliveries_per_s']:,.0f} | {single['server_cpu']:.0%} | "
                f"{single['us_per_delivery']:.2f} | {per_core:,.0f} | {single['loadgen_cpu']:.0%} | {redis} | "
                f"{single['loss']:.0f} | {_who_saturated(data, server, size, 'single')} |"
            )
    return lines


def _target_lines(data: dict[str, Any], mode: str = "closed") -> list[str]:
    check = target_check(data, mode)
    if check is None:
        return [f"Target (room size {TARGET_SIZE}): not measured in this run."]
    per_core = "hit" if check["per_core_hit"] else "missed"
    ratio = "hit" if check["ratio_hit"] else "missed"
    window = "one message" if mode == "single" else f"{data['settings']['window']} messages"
    return [
        f"Target at room size {TARGET_SIZE}, memory mode, {window} in flight per room:"
        f" ≥{TARGET_PER_CORE:,} deliveries/s per server core —"
        f" **{per_core}** ({check['per_core']:,.0f}, {check['per_core'] / TARGET_PER_CORE:.2f}x the target);"
        f" ≥{TARGET_RATIO:.1f}x `{GEVENT_REFERENCE}`'s deliveries/s — **{ratio}** ({check['ratio']:.2f}x;"
        f" per server core {check['per_core_ratio']:.2f}x)."
    ]


def render(data: dict[str, Any], stem: str, plots: list[str]) -> str:
    """The stand-alone fan-out report."""
    return "\n".join([f"# geventchat fan-out benchmark, {stem}", "", *section(data, plots)]) + "\n"


def plot(data: dict[str, Any], directory: Path, stem: str) -> list[str]:
    """``<stem>-fanout.png``: deliveries/s and deliveries per server core, per server and room size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = medians(data)
    sizes = data["settings"]["sizes"]
    servers = [name for name in data["settings"]["servers"] if any(key[0] == name for key in table)]
    if not servers:
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(servers)
    for index, server in enumerate(servers):
        rates, per_core = [], []
        for size in sizes:
            closed = table.get((server, size, "closed"))
            rates.append(closed["deliveries_per_s"] if closed else 0.0)
            us = closed["us_per_delivery"] if closed else 0.0
            per_core.append(1e6 / us if us else 0.0)
        xs = [position + index * width for position in range(len(sizes))]
        style = {"edgecolor": "black", "linewidth": 1.5} if server == GEVENTCHAT else {}
        left.bar(xs, rates, width, label=server, **style)
        right.bar(xs, per_core, width, label=server, **style)
    for axis, label in ((left, "deliveries/s"), (right, "deliveries per server CPU second")):
        axis.set_xticks([position + 0.4 - width / 2 for position in range(len(sizes))])
        axis.set_xticklabels([f"room size {size}" for size in sizes])
        axis.set_ylabel(label)
        axis.grid(True, axis="y", alpha=0.3)
    right.axhline(TARGET_PER_CORE, color="red", linestyle="--", linewidth=1, label="target (size 100, memory)")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    left.set_title("Fan-out throughput")
    right.set_title("Fan-out per server core (Redis's CPU not counted)")
    fig.tight_layout()
    name = f"{stem}-fanout.png"
    directory.mkdir(parents=True, exist_ok=True)
    fig.savefig(directory / name, dpi=90)
    plt.close(fig)
    return [name]
