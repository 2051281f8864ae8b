"""Benchmark: hold N concurrent IdleUsers against one geventchat server and count failures.

    .venv/bin/python benchmarks/bench_idle.py [--users 10000] [--spawn-rate 500] [--hold 40] [--processes 2]

Starts ``python -m geventchat --port 0`` (its connection cap is its open-file limit minus 1000: 19,000 here), then
``locust --headless`` with ``IdleUser`` spread over ``--processes`` worker processes (each stays far under the
20,000 open files per process) and over the source addresses 127.0.0.1-127.0.0.8 (so connect() never scans a
crowded ephemeral-port range). Every user negotiates ``--gc-timeout`` and speaks ``--gc-idle-margin`` seconds
before it would expire, so the hold exercises the server's idle timers too. Prints Locust's counts, the failures by
cause, the server's own count of concurrent connections, and both processes' memory.

Not a test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from geventchat.testing import ServerProcess, rss_bytes

ROOT = Path(__file__).resolve().parent.parent
#: The load tester users run.
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
CURRENT = re.compile(r"connections (\d+) current")


def rss_kib(pid: int) -> int:
    """Resident set size of one process, in KiB (0 if it is gone)."""
    try:
        return rss_bytes(pid) // 1024
    except OSError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--spawn-rate", type=int, default=500)
    parser.add_argument("--hold", type=int, default=40, help="seconds to hold after the ramp (default 40)")
    parser.add_argument("--processes", type=int, default=2, help="Locust worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=20.0, help="idle timeout the users negotiate (s)")
    parser.add_argument("--margin", type=float, default=5.0, help="--gc-idle-margin (s)")
    parser.add_argument("--sources", default="127.0.0.1-127.0.0.8", help="--gc-source-addresses")
    args = parser.parse_args()

    server = ServerProcess("--port", "0", "--stats-interval", "2", use_gevent=False)
    address = f"{server.host}:{server.port}"
    peak = [0]
    server_rss = [0]

    def watch_server() -> None:
        seen = 0
        while server.proc.poll() is None:
            lines = server.stderr
            for line in lines[seen:]:
                found = CURRENT.search(line)
                if found:
                    peak[0] = max(peak[0], int(found.group(1)))
                    server_rss[0] = max(server_rss[0], rss_kib(server.pid))
            seen = len(lines)
            time.sleep(0.5)

    threading.Thread(target=watch_server, daemon=True).start()
    run_time = args.users // args.spawn_rate + args.hold
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "idle"
        command = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--only-summary",
            "--processes",
            str(args.processes),
            "-u",
            str(args.users),
            "-r",
            str(args.spawn_rate),
            "-t",
            f"{run_time}s",
            "--host",
            f"tcp://{address}",
            "--csv",
            str(prefix),
            "--gc-timeout",
            str(args.timeout),
            "--gc-idle-margin",
            str(args.margin),
            "--gc-source-addresses",
            args.sources,
            "IdleUser",
        ]
        started = time.monotonic()
        locust = subprocess.Popen(command, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        locust_rss = 0
        while locust.poll() is None and time.monotonic() - started < run_time + 120:
            children = subprocess.run(
                ["pgrep", "-P", str(locust.pid)], capture_output=True, text=True, check=False
            ).stdout.split()
            locust_rss = max(locust_rss, rss_kib(locust.pid) + sum(rss_kib(int(c)) for c in children))
            time.sleep(1)
        output, _ = locust.communicate(timeout=120)
        stats = {row["Name"]: row for row in csv.DictReader(Path(f"{prefix}_stats.csv").read_text().splitlines())}
        failures_file = Path(f"{prefix}_failures.csv")
        failures = list(csv.DictReader(failures_file.read_text().splitlines())) if failures_file.exists() else []
    server.stop(timeout=60)

    print(
        f"locust exit code {locust.returncode}; {args.users} IdleUsers over {args.processes} processes, "
        f"sources {args.sources}, ramp {args.spawn_rate}/s, held {args.hold}s"
    )
    for name in ("connect", "greeting", "timeout", "idle", "quit"):
        row = stats.get(name)
        if row:
            print(f"  {name:<9} {int(row['Request Count']):>7} requests {int(row['Failure Count']):>5} failures")
    print(f"  failures by cause: {[(f['Name'], f['Error'], f['Occurrences']) for f in failures] or 'none'}")
    print(f"  server: peak {peak[0]} concurrent connections (its own count), peak RSS {server_rss[0] / 1024:.0f} MiB")
    print(f"  locust: peak RSS {locust_rss / 1024:.0f} MiB over all its processes")
    for line in output.splitlines():
        if line.split()[:2] == ["IdleUser", "idle"] or line.startswith("Scenario"):
            print("  " + line)


if __name__ == "__main__":
    main()
