"""The load generator: uvloop with ``asyncio.Protocol`` callbacks (no coroutine per request), one process per core.

Modes (each prints JSON lines on stdout; ``python -m benchmarks.loadgen MODE --help``):

- ``echo``: N connections, one 32-byte line in flight on each (closed loop); replies/s and latency.
- ``rate``: N connections, a fixed offered load (open loop); latency is measured from when each request was *due*,
  so a stalled server cannot hide its queueing (no coordinated omission).
- ``churn``: C concurrent cycles of connect, greeting, timeout line, one echo, ``:q``, close; cycles/s.
- ``hold``: open N connections (the handshake timed per connection) and keep them idle; on ``check`` on stdin
  every one sends a line and must be answered; ``close`` ends it.

Sources are spread over loopback addresses 127.0.0.1, .2, ... (``--sources``): past ~14,000 connections from one
source address Linux's connect() scans the ephemeral port range and stalls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import resource
import socket
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from geventchat.testing import cpu_seconds, descendants, summed

MESSAGE = b"m" * 31 + b"\n"  # 32-byte lines, as in the anchors
TIMEOUT_LINE = b"60\n"
HOLD_TIMEOUT_LINE = b"3600\n"
QUIT_LINE = b":q\n"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def percentiles(samples: array, points: tuple[float, ...] = (50, 99, 99.9)) -> dict[str, float]:  # type: ignore[type-arg]
    """Percentiles of ``samples`` (seconds) in milliseconds, by nearest rank; empty → zeros."""
    if not samples:
        return {f"p{p:g}": 0.0 for p in points} | {"max": 0.0}
    ordered = sorted(samples)
    result = {f"p{p:g}": ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1000 for p in points}
    result["max"] = ordered[-1] * 1000
    return result


def source_addresses(count: int, first: int = 1) -> list[str]:
    """``count`` loopback addresses 127.0.0.<first>, ... (all of 127/8 routes to lo)."""
    return [f"127.0.{(first + i) // 254}.{(first + i) % 254 + 1}" for i in range(count)]


def _same(protocol: asyncio.Protocol) -> asyncio.Protocol:
    return protocol


def cycle(items: list[str]) -> Iterator[str]:
    while True:
        yield from items


async def open_connection(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol], host: str, port: int, source: str
) -> None:
    """Connect from ``source`` without reserving a port at bind() (the kernel picks it per destination)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    await loop.create_connection(factory, sock=sock)


class Window:
    """The measurement window: counts and latencies are kept only while ``measuring``."""

    def __init__(self) -> None:
        self.measuring = False
        self.stopping = False
        self.replies = 0
        self.errors = 0
        self.latencies: array = array("d")  # type: ignore[type-arg]


# --------------------------------------------------------------------------------------------- closed loop


class EchoClient(asyncio.Protocol):
    """Greeting → timeout line and the first message; then a new message as each reply arrives."""

    __slots__ = ("greeted", "sent_at", "transport", "window")

    def __init__(self, window: Window, greeted: Callable[[], None]) -> None:
        self.window = window
        self.greeted = greeted
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        lines = data.count(b"\n")
        if not lines:
            return  # a reply split across reads: wait for its end
        now = time.perf_counter()
        window = self.window
        if self.sent_at == 0.0:
            self.greeted()
            lines -= 1
            self.sent_at = now
            self.transport.write(TIMEOUT_LINE + MESSAGE)  # type: ignore[union-attr]
            return
        if window.measuring:
            window.replies += lines
            window.latencies.append(now - self.sent_at)
        if not window.stopping:
            self.sent_at = now
            self.transport.write(MESSAGE)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.window.stopping:
            self.window.errors += 1


# --------------------------------------------------------------------------------------------- open loop


class RateClient(asyncio.Protocol):
    """One request in flight; requests that come due meanwhile queue here with their due time."""

    __slots__ = ("due", "greeted", "in_flight", "transport", "window")

    def __init__(self, window: Window, greeted: Callable[[], None]) -> None:
        self.window = window
        self.greeted: Callable[[], None] | None = greeted
        self.due: deque[float] = deque()
        self.in_flight: float | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def request(self, due: float) -> None:
        if self.in_flight is None:
            self.in_flight = due
            self.transport.write(MESSAGE)  # type: ignore[union-attr]
        else:
            self.due.append(due)

    def data_received(self, data: bytes) -> None:
        lines = data.count(b"\n")
        if not lines:
            return
        if self.greeted is not None:
            self.greeted()
            self.greeted = None
            self.transport.write(TIMEOUT_LINE)  # type: ignore[union-attr]
            lines -= 1
            if not lines:
                return
        now = time.perf_counter()
        window = self.window
        if self.in_flight is not None:
            if window.measuring:
                window.replies += 1
                window.latencies.append(now - self.in_flight)
            self.in_flight = None
        if self.due:
            self.in_flight = self.due.popleft()
            self.transport.write(MESSAGE)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.window.stopping:
            self.window.errors += 1


async def _connect_all(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[Callable[[], None]], asyncio.Protocol],
    args: argparse.Namespace,
) -> tuple[list[asyncio.Protocol], int]:
    """Open ``args.connections`` connections (at most 256 connecting at once) and wait for every greeting (at most
    ``args.greet_timeout`` seconds). Returns the clients and how many were greeted."""
    remaining = args.connections
    all_greeted = loop.create_future()

    def greeted() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not all_greeted.done():
            all_greeted.set_result(None)

    sources = cycle(source_addresses(args.sources))
    clients: list[asyncio.Protocol] = []
    gate = asyncio.Semaphore(256)

    async def one() -> None:
        client = factory(greeted)
        clients.append(client)
        async with gate:
            await open_connection(loop, lambda: client, args.host, args.port, next(sources))

    await asyncio.gather(*(one() for _ in range(args.connections)))
    # A server that serves one client at a time (the iterative model) greets only some: go on with those.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(all_greeted, args.greet_timeout)
    return clients, args.connections - remaining


def run_wait_seconds(pid: int | str = "self") -> float:
    """Seconds the process has waited on a run queue for a core (``/proc/PID/schedstat``); 0.0 if it is gone."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as schedstat:
            return int(schedstat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class _CpuMeter:
    """CPU used by this process and by the server's process tree over the window, and the time each waited for a
    core (other work had it), as fractions of wall time."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def start(self) -> None:
        self.wall = time.perf_counter()
        self.own = time.process_time()
        self.own_wait = run_wait_seconds()
        self.pids = descendants(self.server_pid) if self.server_pid else []
        self.server = summed(cpu_seconds, self.pids)
        self.server_wait = summed(run_wait_seconds, self.pids)

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall
        result = {
            "seconds": wall,
            "loadgen_cpu": (time.process_time() - self.own) / wall,
            "loadgen_wait": (run_wait_seconds() - self.own_wait) / wall,
        }
        if self.server_pid:
            pids = sorted(set(self.pids) | set(descendants(self.server_pid)))
            result["server_cpu"] = (summed(cpu_seconds, pids) - self.server) / wall
            result["server_wait"] = (summed(run_wait_seconds, pids) - self.server_wait) / wall
        return result


async def run_echo(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    window = Window()
    clients, greeted = await _connect_all(loop, lambda greeted: EchoClient(window, greeted), args)
    await asyncio.sleep(args.warmup)
    meter = _CpuMeter(args.server_pid)
    meter.start()
    window.measuring = True
    await asyncio.sleep(args.duration)
    window.measuring = False
    usage = meter.stop()
    window.stopping = True
    for client in clients:
        client.transport.close()  # type: ignore[attr-defined]
    emit(
        {
            "mode": "echo",
            "connections": args.connections,
            "greeted": greeted,
            "replies": window.replies,
            "replies_per_s": window.replies / usage["seconds"],
            "errors": window.errors,
            **usage,
            **percentiles(window.latencies),
        }
    )


async def run_rate(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    window = Window()
    connected, greeted = await _connect_all(loop, lambda greeted: RateClient(window, greeted), args)
    clients: list[RateClient] = [c for c in connected if isinstance(c, RateClient) and c.greeted is None]
    await asyncio.sleep(0.2)  # let the timeout lines land
    meter = _CpuMeter(args.server_pid)
    rate = args.rate
    start = time.perf_counter()
    issued = 0
    count = len(clients)
    warm_until = start + args.warmup
    end = warm_until + args.duration
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if not window.measuring and now >= warm_until:
            meter.start()
            window.measuring = True
        due_count = int((now - start) * rate)
        # A request is due when this tick issues it (the timer ticks every millisecond, so the finer schedule would
        # only add the generator's own granularity); one queued behind a slow reply keeps that time.
        while issued < due_count:
            clients[issued % count].request(now)
            issued += 1
        await asyncio.sleep(0.001)  # uvloop timers have millisecond resolution: shorter would spin
    window.measuring = False
    usage = meter.stop()
    backlog = sum(len(c.due) for c in clients)
    window.stopping = True
    for client in clients:
        client.transport.close()  # type: ignore[union-attr]
    emit(
        {
            "mode": "rate",
            "connections": args.connections,
            "greeted": greeted,
            "offered_per_s": rate,
            "replies_per_s": window.replies / usage["seconds"],
            "backlog": backlog,
            "errors": window.errors,
            **usage,
            **percentiles(window.latencies),
        }
    )


# --------------------------------------------------------------------------------------------- churn


class ChurnClient(asyncio.Protocol):
    """connect → greeting → timeout line + one message → reply → ``:q`` → its echo → close."""

    __slots__ = ("done", "lines", "transport")

    def __init__(self, done: asyncio.Future[bool]) -> None:
        self.done = done
        self.lines = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        before = self.lines
        self.lines += data.count(b"\n")
        if before < 1 <= self.lines:
            self.transport.write(TIMEOUT_LINE + MESSAGE)  # type: ignore[union-attr]
        if before < 2 <= self.lines:
            self.transport.write(QUIT_LINE)  # type: ignore[union-attr]
        if self.lines >= 3:
            self.transport.close()  # type: ignore[union-attr]
            if not self.done.done():
                self.done.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(False)


async def run_churn(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    window = Window()
    sources = cycle(source_addresses(args.sources))

    async def worker() -> None:
        while not window.stopping:
            done: asyncio.Future[bool] = loop.create_future()
            started = time.perf_counter()
            try:
                client = ChurnClient(done)
                await open_connection(loop, functools.partial(_same, client), args.host, args.port, next(sources))
                ok = await asyncio.wait_for(done, 10)
            except (OSError, asyncio.TimeoutError):
                ok = False
            if window.measuring:
                if ok:
                    window.replies += 1
                    window.latencies.append(time.perf_counter() - started)
                else:
                    window.errors += 1

    workers = [asyncio.ensure_future(worker()) for _ in range(args.connections)]
    await asyncio.sleep(args.warmup)
    meter = _CpuMeter(args.server_pid)
    meter.start()
    window.measuring = True
    await asyncio.sleep(args.duration)
    window.measuring = False
    usage = meter.stop()
    window.stopping = True
    await asyncio.wait(workers, timeout=15)
    emit(
        {
            "mode": "churn",
            "concurrency": args.connections,
            "cycles_per_s": window.replies / usage["seconds"],
            "errors": window.errors,
            **usage,
            **percentiles(window.latencies),
        }
    )


# --------------------------------------------------------------------------------------------- hold


class HoldClient(asyncio.Protocol):
    """Handshake, then idle; ``check()`` sends one line and expects its echo."""

    __slots__ = ("answered", "greeted", "lines", "started", "transport")

    def __init__(self, greeted: Callable[[HoldClient], None]) -> None:
        self.greeted = greeted
        self.answered: asyncio.Future[bool] | None = None
        self.lines = 0
        self.started = time.perf_counter()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.lines += data.count(b"\n")
        if self.lines == 1 and self.answered is None and self.greeted is not None:
            self.greeted(self)
            self.greeted = None  # type: ignore[assignment]
            self.transport.write(HOLD_TIMEOUT_LINE)  # type: ignore[union-attr]
        elif self.lines >= 2 and self.answered is not None and not self.answered.done():
            self.answered.set_result(True)

    def check(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[bool]:
        self.answered = loop.create_future()
        if self.transport is None or self.transport.is_closing():
            self.answered.set_result(False)
        else:
            self.transport.write(MESSAGE)
        return self.answered

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(False)
        self.transport = None


async def run_hold(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    handshakes: array = array("d")  # type: ignore[type-arg]
    clients: list[HoldClient] = []
    failures = 0
    sources = cycle(source_addresses(args.sources, args.first_source))
    gate = asyncio.Semaphore(args.opening)

    def greeted(client: HoldClient) -> None:
        handshakes.append(time.perf_counter() - client.started)
        gate.release()

    async def one() -> None:
        nonlocal failures
        await gate.acquire()
        client = HoldClient(greeted)
        try:
            await open_connection(loop, lambda: client, args.host, args.port, next(sources))
        except OSError:
            failures += 1
            gate.release()
            return
        clients.append(client)

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(one()) for _ in range(args.connections)]
    await asyncio.gather(*tasks)
    deadline = time.perf_counter() + 60
    while len(handshakes) + failures < args.connections and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    emit(
        {
            "mode": "hold",
            "phase": "opened",
            "connections": args.connections,
            "opened": len(handshakes),
            "failed": args.connections - len(handshakes),
            "open_seconds": time.perf_counter() - started,
            **{f"handshake_{k}": v for k, v in percentiles(handshakes).items()},
        }
    )
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        command = (await reader.readline()).strip()
        if command == b"check":
            checks = [client.check(loop) for client in clients]
            done, _ = await asyncio.wait(checks, timeout=60) if checks else (set(), set())
            answered = sum(1 for f in done if f.result())
            emit({"mode": "hold", "phase": "checked", "answered": answered, "held": len(clients)})
        else:  # "close" or end of input
            for client in clients:
                if client.transport is not None:
                    client.transport.close()
            emit({"mode": "hold", "phase": "closed"})
            return


# --------------------------------------------------------------------------------------------- entry point


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    p.add_argument("mode", choices=["echo", "rate", "churn", "hold"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=100, help="connections (concurrency for churn)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds run before measuring")
    p.add_argument("--rate", type=float, default=10000.0, help="offered requests/s (rate mode)")
    p.add_argument("--sources", type=int, default=4, help="loopback source addresses to spread over")
    p.add_argument("--first-source", type=int, default=1, help="first source address index (hold mode)")
    p.add_argument("--opening", type=int, default=100, help="connections opening at once (hold mode)")
    p.add_argument("--greet-timeout", type=float, default=30.0, help="seconds to wait for every greeting")
    p.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    p.add_argument("--server-pid", type=int, default=None, help="measure this process tree's CPU too")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The generator's own collector would add its pauses to the latencies it measures; it lives for seconds.
    gc.disable()
    import uvloop

    runner = {"echo": run_echo, "rate": run_rate, "churn": run_churn, "hold": run_hold}[args.mode]
    uvloop.run(runner(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
