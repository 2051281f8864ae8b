"""Quick sanity check, not the benchmark: do 2 workers serve more replies/s than 1 on this machine?

Starts ``python -m geventchat --workers N --port 0`` for each N in turn (interleaved, several rounds), drives it
from one load-generator process with pipelined requests (``--depth`` lines in flight per connection, so the
generator spends little CPU per reply and leaves the cores to the server), and prints replies/s per run, the
medians and their ratio. Nothing is pinned: the workers are meant to use every core, the generator shares them.

    .venv/bin/python scripts/sanity_workers.py [--workers 1 2] [--connections 100] [--depth 16] [--seconds 4]
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import time

import psutil

MESSAGE = b"x" * 31 + b"\n"  # 32-byte lines, as in the team's anchors
QUIET = ["--stats-interval", "0", "--log-level", "WARNING"]


def start_server(workers: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "geventchat", "--workers", str(workers), "--port", "0", *QUIET],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until every worker listens
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def open_connections(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        greeting = b""
        while b"\n" not in greeting:
            greeting += sock.recv(4096)
        sock.sendall(b"60\n")
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def drive(
    sockets: list[socket.socket], owed: dict[socket.socket, int], depth: int, seconds: float
) -> tuple[int, float]:
    """Keep ``depth`` requests in flight per connection for ``seconds``; returns (replies, generator CPU seconds).
    ``owed`` (replies still due per connection) carries over between calls, so a warm-up's requests in flight are
    counted once and never doubled up."""
    selector = selectors.DefaultSelector()
    batch = MESSAGE * depth
    replies = 0
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    end = time.monotonic() + seconds
    for sock in sockets:
        selector.register(sock, selectors.EVENT_READ)
        if owed.setdefault(sock, 0) <= 0:
            sock.send(batch)
            owed[sock] += depth
    while time.monotonic() < end:
        for key, _ in selector.select(0.1):
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            try:
                data = conn.recv(262144)
            except BlockingIOError:
                continue
            if not data:
                raise SystemExit("server closed a connection during the run")
            got = data.count(b"\n")
            replies += got
            owed[conn] -= got
            if owed[conn] <= 0:
                conn.send(batch)  # a few hundred bytes into an empty send buffer: never partial
                owed[conn] += depth
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    selector.close()
    return replies, cpu


def server_cpu(pid: int) -> float:
    """CPU seconds used so far by the server process and its workers."""
    parent = psutil.Process(pid)
    total = 0.0
    for process in [parent, *parent.children()]:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def one_run(workers: int, connections: int, depth: int, seconds: float) -> tuple[float, float, float]:
    """Returns (replies/s, generator CPU cores used, server CPU cores used)."""
    proc, port = start_server(workers)
    try:
        sockets = open_connections(port, connections)
        owed: dict[socket.socket, int] = {}
        drive(sockets, owed, depth, 1.0)  # warm-up
        before = server_cpu(proc.pid)
        replies, cpu = drive(sockets, owed, depth, seconds)
        used = server_cpu(proc.pid) - before
        for sock in sockets:
            sock.close()
    finally:
        proc.terminate()
        proc.wait(30)
    return replies / seconds, cpu / seconds, used / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--depth", type=int, default=16, help="requests in flight per connection")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {args.connections} connections x {args.depth} in flight; {args.seconds:g}s runs")
    results: dict[int, list[float]] = {n: [] for n in args.workers}
    for round_number in range(args.rounds):
        for workers in args.workers:  # interleaved, so drifting machine load hits every setting alike
            rate, cpu, used = one_run(workers, args.connections, args.depth, args.seconds)
            results[workers].append(rate)
            print(
                f"round {round_number + 1}: --workers {workers}: {rate:,.0f} replies/s; CPU cores used: server "
                f"{used:.2f}, generator {cpu:.2f}; {rate / max(used, 1e-9):,.0f} replies per server CPU second"
            )
    medians = {n: statistics.median(rates) for n, rates in results.items()}
    for workers, median in medians.items():
        print(f"median --workers {workers}: {median:,.0f} replies/s")
    base = medians[args.workers[0]]
    for workers in args.workers[1:]:
        print(f"ratio --workers {workers} / --workers {args.workers[0]}: {medians[workers] / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
