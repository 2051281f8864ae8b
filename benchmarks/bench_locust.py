"""Benchmark: echo requests/s one Locust process drives against one geventchat server, on separate cores.

    .venv/bin/python benchmarks/bench_locust.py [--users 50] [--seconds 8] [--runs 3]

Starts ``python -m geventchat --port 0`` pinned to CPU 0, then alternates runs of ``ChatUser`` (think time 0, every
reply checked, µs histograms on) and of the bare-bones baseline (``bare_locustfile.py``: no check, no histogram),
each one Locust process (``loadtest/run_programmatic.py``: a local runner, as ``locust --headless`` uses) pinned to
CPU 1. Prints each run's echo requests/s and the Locust process's CPU µs per request over a steady window, the
medians and the ratios. The issue's target is 35,000/s for ChatUser; on a shared machine the CPU per request and the
ratio to the baseline are the figures that survive the noise.

Not a test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from geventchat.testing import QUIET, ServerProcess

ROOT = Path(__file__).resolve().parent.parent
#: The load tester users run, and the bare-bones baseline next to this file.
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
BARE_LOCUSTFILE = Path(__file__).resolve().parent / "bare_locustfile.py"


def start_server(cpu: int) -> tuple[ServerProcess, str]:
    """A geventchat server on a free port, pinned to ``cpu``; returns it and ``HOST:PORT``."""
    server = ServerProcess(*QUIET, "--log-level", "WARNING", cpus={cpu}, use_gevent=False)
    return server, f"{server.host}:{server.port}"


def run_locust(
    locustfile: Path, user_class: str, address: str, *, users: int, seconds: float, cpu: int
) -> dict[str, Any]:
    """One in-process Locust run (``run_programmatic.py``) pinned to ``cpu``; returns its ``window`` figures:
    echo requests/s and CPU µs per request, counted from one second after every user started to the end."""
    command = [
        sys.executable,
        str(ROOT / "loadtest" / "run_programmatic.py"),
        "--locustfile",
        str(locustfile),
        "--host",
        f"tcp://{address}",
        "--users",
        str(users),
        "--seconds",
        str(seconds),
        "--warmup",
        "1",
        user_class,
    ]
    if locustfile == LOCUSTFILE:
        command += ["--gc-think-time", "0"]
    completed = subprocess.run(
        ["taskset", "-c", str(cpu), *command], capture_output=True, text=True, timeout=seconds + 90, check=False
    )
    try:
        summary: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        sys.stderr.write(completed.stderr[-3000:])
        raise SystemExit(f"locust run failed (exit {completed.returncode})") from None
    failures = sum(summary["failures"].values())
    if failures:
        print(f"  ({user_class}: {failures} failures: {summary['causes']})")
    window: dict[str, Any] = summary["window"]
    return window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50, help="concurrent users (default 50)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds measured per run (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind, interleaved (default 3)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare-bones baseline runs")
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two CPUs: the server and Locust each get one")
    server, address = start_server(cpu=0)
    ours: list[dict[str, Any]] = []
    bare: list[dict[str, Any]] = []
    try:
        for run in range(args.runs):
            kinds = [(LOCUSTFILE, "ChatUser", ours)]
            if not args.no_baseline:
                kinds.append((BARE_LOCUSTFILE, "BareEchoUser", bare))
            for locustfile, user_class, results in kinds:
                window = run_locust(locustfile, user_class, address, users=args.users, seconds=args.seconds, cpu=1)
                results.append(window)
                print(
                    f"run {run + 1}: {user_class:<13} {window['requests_per_s']:>9,.0f} echo requests/s, "
                    f"{window['cpu_us_per_request']:>6.1f} CPU µs/request",
                    flush=True,
                )
    finally:
        server.stop(timeout=30)

    def median(results: list[dict[str, Any]], key: str) -> float:
        return statistics.median(float(r[key]) for r in results)

    print(
        f"ChatUser (every reply checked, µs histograms): median {median(ours, 'requests_per_s'):,.0f} requests/s, "
        f"{median(ours, 'cpu_us_per_request'):.1f} CPU µs/request over {len(ours)} runs"
    )
    if bare:
        print(
            f"BareEchoUser (unchecked, no histograms):      median {median(bare, 'requests_per_s'):,.0f} requests/s, "
            f"{median(bare, 'cpu_us_per_request'):.1f} CPU µs/request"
        )
        print(
            f"ratio ChatUser/bare: requests/s {median(ours, 'requests_per_s') / median(bare, 'requests_per_s'):.2f}, "
            f"CPU per request {median(ours, 'cpu_us_per_request') / median(bare, 'cpu_us_per_request'):.2f}"
        )
    print(
        "target: ChatUser >= 35,000 requests/s (<= 28.6 CPU µs/request when Locust has a core to itself); compare "
        "with the bare user's figure above, measured in this same run"
    )


if __name__ == "__main__":
    main()
