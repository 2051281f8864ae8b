"""Garbage-collector pauses inside a geventchat server while it takes on many idle connections.

``python -m benchmarks.gcpause --connections 15000 --gc-tuning on|off`` runs a ChatServer in this process (pinned
to the server CPU), opens the connections with the hold load generator, and times every collection the
interpreter runs meanwhile (``gc.callbacks``). Prints one JSON line: collections per generation, the longest
pause, the total, and the handshake percentiles the clients saw.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gcpause", description=__doc__)
    parser.add_argument("--connections", type=int, default=15000)
    parser.add_argument("--gc-tuning", choices=["on", "off"], default="on")
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--loadgen-cpu", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    import gevent

    from geventchat.config import ServerConfig
    from geventchat.server import ChatServer

    server = ChatServer(ServerConfig(port=0, stats_interval=0))
    server.start()
    if args.gc_tuning == "on":
        from geventchat.gctuning import tune_collector

        tune_collector()
    pauses: list[tuple[int, float]] = []
    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((int(info["generation"]), time.perf_counter() - started[0]))

    gc.callbacks.append(on_gc)
    command = [sys.executable, "-m", "benchmarks.loadgen", "hold", "--port", str(server.address[1])]
    command += ["--connections", str(args.connections), "--opening", "10"]
    if args.loadgen_cpu is not None:
        command += ["--cpu", str(args.loadgen_cpu)]
    # Popen would fork a gevent process; this is a plain subprocess that we talk to through pipes.
    loadgen = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert loadgen.stdout is not None and loadgen.stdin is not None
    from gevent.os import make_nonblocking, nb_read

    make_nonblocking(loadgen.stdout.fileno())
    line = b""
    deadline = time.monotonic() + 600
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        gevent.sleep(0.05)  # the server runs while we wait
        try:
            line += nb_read(loadgen.stdout.fileno(), 65536)
        except BlockingIOError:
            continue
    gc.callbacks.remove(on_gc)
    loadgen.stdin.write("close\n")
    loadgen.stdin.flush()
    opened = json.loads(line) if line.startswith(b"{") else {}
    server.stop()
    loadgen.wait(30)
    by_generation = {g: [p for gen, p in pauses if gen == g] for g in (0, 1, 2)}
    print(
        json.dumps(
            {
                "mode": "gc",
                "gc_tuning": args.gc_tuning,
                "connections": args.connections,
                "opened": opened.get("opened", 0),
                "collections": {str(g): len(v) for g, v in by_generation.items()},
                "full_collection_max_ms": max(by_generation[2], default=0.0) * 1000,
                "pause_max_ms": max((p for _, p in pauses), default=0.0) * 1000,
                "pause_total_ms": sum(p for _, p in pauses) * 1000,
                "handshake_p99": opened.get("handshake_p99", 0.0),
                "handshake_max": opened.get("handshake_max", 0.0),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
