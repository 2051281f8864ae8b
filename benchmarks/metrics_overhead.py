"""Server CPU per reply with and without ``--metrics-port``, one request in flight per connection (the worst case
for per-chunk costs: every chunk is one message). Reads the server's CPU time from /proc/PID/stat, so the
(slower) Python client does not distort the figure. Interleaved runs; prints each and the median ratio.

    .venv/bin/python benchmarks/metrics_overhead.py [--runs 3] [--connections 20] [--requests 2000]
"""

from __future__ import annotations

import argparse
import statistics

import gevent

from geventchat import ChatClient
from geventchat.testing import QUIET, ServerProcess, cpu_seconds


def one_run(metrics: bool, connections: int, requests: int) -> float:
    """Server CPU microseconds per reply."""
    with ServerProcess(*QUIET, *(["--metrics-port", "0"] if metrics else [])) as server:
        clients = [ChatClient.connect(*server.address, idle_timeout=60) for _ in range(connections)]
        before = cpu_seconds(server.pid)

        def talk(client: ChatClient) -> None:
            for i in range(requests):
                client.request(f"message {i}")

        gevent.joinall([gevent.spawn(talk, c) for c in clients], raise_error=True)
        used = cpu_seconds(server.pid) - before
        for client in clients:
            client.close()
        return used / (connections * requests) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000, help="round trips per connection")
    args = parser.parse_args()
    results: dict[bool, list[float]] = {False: [], True: []}
    for run in range(args.runs):
        for metrics in (False, True):
            per_reply = one_run(metrics, args.connections, args.requests)
            results[metrics].append(per_reply)
            print(f"run {run + 1}: metrics {'on ' if metrics else 'off'}  {per_reply:6.2f} µs server CPU per reply")
    off, on = statistics.median(results[False]), statistics.median(results[True])
    print(f"median: off {off:.2f} µs, on {on:.2f} µs per reply; on/off = {on / off:.3f}")


if __name__ == "__main__":
    main()
