"""Churn soak, the long version of tests/test_faults.py::test_churn_soak_leaks_no_fds_greenlets_or_memory.

Runs an in-process server and CONCURRENCY client greenlets doing connect → timeout line → echo → quit cycles for
SECONDS, and prints open fds, live greenlets and RSS at every report interval, then the growth after warm-up.

    .venv/bin/python benchmarks/soak.py --seconds 120 --concurrency 20
"""

from __future__ import annotations

import argparse
import time

import gevent

from geventchat import ChatClient, ChatServer, ServerConfig
from geventchat.testing import live_greenlets, open_fds, rss_bytes


def rss_kib() -> int:
    return rss_bytes() // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="soak duration after warm-up")
    parser.add_argument("--concurrency", type=int, default=20, help="client greenlets cycling at once")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of cycles before the baseline")
    parser.add_argument("--report", type=float, default=10.0, help="seconds between progress lines")
    args = parser.parse_args()

    server = ChatServer(ServerConfig(port=0, stats_interval=0, linger=0.5))
    server.start()
    cycles = [0]
    stop_at = [time.monotonic() + args.warmup]

    def cycle_until_stopped() -> None:
        while time.monotonic() < stop_at[0]:
            with ChatClient.connect(*server.address, idle_timeout=5) as client:
                client.request("soak")
                client.quit()
            cycles[0] += 1

    def run(seconds: float) -> None:
        stop_at[0] = time.monotonic() + seconds
        workers = [gevent.spawn(cycle_until_stopped) for _ in range(args.concurrency)]
        gevent.joinall(workers, raise_error=True)
        deadline = time.monotonic() + 10
        while server.stats.current and time.monotonic() < deadline:
            gevent.sleep(0.01)

    run(args.warmup)
    base = (open_fds(), live_greenlets(), rss_kib())
    print(f"baseline after {cycles[0]} warm-up cycles: fds {base[0]}, greenlets {base[1]}, rss {base[2]} KiB")
    cycles[0] = 0
    started = time.monotonic()
    remaining = args.seconds
    while remaining > 0:
        run(min(args.report, remaining))
        remaining = args.seconds - (time.monotonic() - started)
        elapsed = time.monotonic() - started
        print(
            f"{elapsed:6.1f}s {cycles[0]:8d} cycles ({cycles[0] / elapsed:.0f}/s)"
            f"  fds {open_fds()}  greenlets {live_greenlets()}  rss {rss_kib()} KiB"
        )
    end = (open_fds(), live_greenlets(), rss_kib())
    print(
        f"after {cycles[0]} cycles: fds {base[0]} -> {end[0]} ({end[0] - base[0]:+d}), greenlets {base[1]} -> "
        f"{end[1]} ({end[1] - base[1]:+d}), rss {base[2]} -> {end[2]} KiB ({end[2] - base[2]:+d} KiB)"
    )
    server.stop()


if __name__ == "__main__":
    main()
