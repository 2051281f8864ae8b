"""The fan-out phase: chat-room deliveries per second and server CPU per delivery, geventchat beside two references.

For each room size, every server takes the same closed-loop run of the C generator (``benchmarks/c/fanout_gen.c``:
R rooms x S members, one sender per room, a bounded window of messages in flight), back to back; then an open-loop
run at ``rate_fraction`` of the messages/s that server reached, for its p99 delivery latency (from each message's
due time). Servers:

- ``geventchat``: one process, rooms in memory, ``--room-rate 0``, pinned to the server CPU;
- ``geventchat 2 workers redis``: ``--workers 2 --redis`` on a ``redis-server`` this phase starts (free port,
  persistence off, temporary directory); it needs both cores, so neither it nor the generator is pinned and the
  figure that compares is CPU per delivery (Redis's CPU reported beside it);
- ``gevent-broadcast`` and ``uvloop-broadcast`` from :mod:`benchmarks.broadcast_refs`, pinned like geventchat.

``python -m benchmarks fanout [--quick|--full|--tiny]`` writes ``benchmarks/results/<date>-fanout.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import datetime
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from geventchat.testing import RedisServer, RedisServerFailed, RedisServerMissing, descendants, summed

from . import cbuild
from .loadgen import run_wait_seconds
from .runner import LOADGEN_CPU, PYTHON, BenchmarkError, RunningServer, ServerSpec, geventchat_command, run_json, save
from .saturation import saturation

RESULTS = Path(__file__).parent / "results"
GEVENTCHAT = "geventchat"
REDIS_MODE = "geventchat 2 workers redis"
GEVENT_REFERENCE = "gevent-broadcast"
UVLOOP_REFERENCE = "uvloop-broadcast"
SERVERS = (GEVENTCHAT, REDIS_MODE, GEVENT_REFERENCE, UVLOOP_REFERENCE)
#: Target from issue #11: at room size 100, memory mode delivers this many per second per server core ...
TARGET_PER_CORE = 150_000
#: ... and at least this many times the minimal gevent reference's deliveries/s.
TARGET_RATIO = 1.0
TARGET_SIZE = 100
#: A side whose core is at least this busy (CPU seconds per second) is the one that saturated.


@dataclass
class FanoutSettings:
    """One fan-out configuration (presets in :func:`settings_for`)."""

    sizes: tuple[int, ...] = (10, 100)
    #: Members in all rooms together: rooms = members // size (at least 1).
    members: int = 1000
    duration: float = 2.0
    warmup: float = 0.5
    repeats: int = 1
    #: Messages in flight per room in the closed loop.
    window: int = 16
    #: Room sizes that also get a closed loop with one message in flight per room ("single" mode): how chat
    #: traffic usually arrives, and where a server gets nothing to batch.
    single_sizes: tuple[int, ...] = (100,)
    rate_fraction: float = 0.5
    drain: float = 3.0
    #: Seconds for every member to connect and join before the run is given up.
    setup_timeout: float = 60.0
    servers: tuple[str, ...] = SERVERS


def settings_for(preset: str) -> FanoutSettings:
    if preset == "full":
        return FanoutSettings(duration=5.0, warmup=1.0, repeats=3)
    if preset == "tiny":  # the smoke test's: seconds, not minutes
        return FanoutSettings(
            sizes=(3, 5), single_sizes=(5,), members=10, duration=0.5, warmup=0.2, drain=5.0, setup_timeout=20.0
        )
    return FanoutSettings(duration=1.5)


class RedisMissing(BenchmarkError):
    """``redis-server`` is not installed: the Redis mode cannot be measured here (install the Debian package)."""


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A ``redis-server`` for the Redis mode (:class:`geventchat.testing.RedisServer`, in a temporary directory),
    killed on the way out."""
    with tempfile.TemporaryDirectory(prefix="fanout-redis-") as directory:
        try:
            server = RedisServer(Path(directory))
            server.start()
        except RedisServerMissing as exc:
            raise RedisMissing(f"{exc} for the Redis mode") from exc
        except RedisServerFailed as exc:
            raise BenchmarkError(str(exc)) from exc
        try:
            yield server
        finally:
            server.stop()


def server_spec(name: str, redis: RedisServer | None) -> ServerSpec:
    """How to start fan-out server ``name`` (the Redis mode needs ``redis``)."""
    if name == GEVENTCHAT:
        return ServerSpec(name, geventchat_command("--room-rate", "0"))
    if name == REDIS_MODE:
        if redis is None:
            raise BenchmarkError("the Redis mode needs a redis-server")
        command = geventchat_command("--workers", "2", "--redis", redis.url, "--room-rate", "0")
        return ServerSpec(name, command, forks=True, pinned=False)
    return ServerSpec(name, (PYTHON, "-m", "benchmarks.broadcast_refs", name, "--port", "0"))


class RoomsNotReady(BenchmarkError):
    """The server listens but its rooms do not answer ``:join`` yet (e.g. its Redis connection is not up)."""


def join_probe(port: int, timeout: float = 5.0) -> bool:
    """True if one client can join a room on ``127.0.0.1:port`` now (greeting, timeout line, ``:join``)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"60\n:join fanoutprobe\n")
            received = b""
            for _ in range(64):  # bounded: the answer is four short lines
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                received += chunk
                if b"\nok: joined " in received:
                    return True
                if b"\nerror: " in received or b"\nbye: " in received:
                    return False
            return False
    except OSError:
        return False


def wait_rooms_ready(port: int, *, probes: int = 8, timeout: float = 15.0) -> None:
    """Wait (bounded) until ``probes`` joins in a row succeed: with several workers behind one port, each probe
    lands on any of them, so a run of successes makes it unlikely that one worker is still without its broker."""
    deadline = time.monotonic() + timeout
    streak = 0
    while streak < probes:
        if time.monotonic() > deadline:
            raise RoomsNotReady(f"rooms on port {port} did not answer :join within {timeout:.0f}s")
        if join_probe(port):
            streak += 1
        else:
            streak = 0
            time.sleep(0.1)  # a broker connection coming up: nothing to wait on but the next probe


def generate(
    binary: Path,
    server: RunningServer,
    size: int,
    settings: FanoutSettings,
    *,
    rate_per_room: float | None = None,
    window: int | None = None,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """One run of the C fan-out generator against ``server``; its JSON record (closed loop with ``window``
    messages in flight per room, by default the settings'; open loop at ``rate_per_room`` if given)."""
    rooms = max(1, settings.members // size)
    command = [str(binary), "--port", str(server.port), "--rooms", str(rooms), "--size", str(size)]
    command += ["--duration", str(settings.duration), "--warmup", str(settings.warmup)]
    command += ["--window", str(window or settings.window), "--drain", str(settings.drain)]
    command += ["--setup-timeout", str(settings.setup_timeout)]
    if rate_per_room is not None:
        command += ["--rate", f"{rate_per_room:.3f}"]
    if server.spec.pinned and LOADGEN_CPU is not None:
        command += ["--cpu", str(LOADGEN_CPU)]
    for pid in descendants(server.pid):
        command += ["--server-pid", str(pid)]
    if broker_pid is not None:
        command += ["--broker-pid", str(broker_pid)]
    timeout = 120 + settings.duration + settings.warmup + settings.drain
    server_pids = descendants(server.pid)
    waited_before = summed(run_wait_seconds, server_pids)
    started = time.monotonic()
    record = run_json(command, timeout=timeout, what="the fan-out generator")
    record["shared_cores"] = not server.spec.pinned
    # The server's run-queue wait over the whole run (setup and drain included: the generator measures only its
    # window, so this is an estimate): a pinned server that waited for its core was held back by other work.
    waited = summed(run_wait_seconds, server_pids) - waited_before
    record["server_wait"] = waited / max(time.monotonic() - started, 1e-9)
    return record


def saturated_side(record: dict[str, Any]) -> str:
    """Which side saturated, by the matrix's rule (:mod:`.saturation`); "shared cores" for an unpinned server,
    whose generator shares its cores (read its CPU per delivery instead)."""
    if record.get("shared_cores"):
        return "shared cores"
    return saturation(record["server_cpu"], 1.0, record["loadgen_cpu"], record.get("server_wait"))


def per_delivery_us(record: dict[str, Any]) -> float:
    """Server CPU microseconds per delivery (Redis's CPU not included)."""
    return record["server_cpu_s"] * 1e6 / record["deliveries"] if record["deliveries"] else 0.0


def run_fanout(settings: FanoutSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every server, every room size, closed loop then open loop, ``settings.repeats`` times, interleaved.

    Each measurement gets a freshly started server: the previous run's thousand members leaving at once must not
    cost the next one (the servers share CPU 0), and a Redis-mode worker must not carry state into the next run.
    """
    binary = cbuild.build("fanout_gen")
    results: list[dict[str, Any]] = []
    with _maybe_redis(settings, log) as redis:
        for repeat in range(settings.repeats):
            for size in settings.sizes:
                best: dict[str, float] = {}
                for name in settings.servers:
                    record = _measure(binary, name, size, settings, redis=redis, log=log)
                    record["repeat"] = repeat
                    results.append(record)
                    if record["mode"] == "closed" and record["messages_per_s"] > 0:
                        best[name] = record["messages_per_s"]
                for name in settings.servers:
                    if name not in best:
                        continue
                    rate = best[name] * settings.rate_fraction / max(1, settings.members // size)
                    record = _measure(binary, name, size, settings, redis=redis, rate_per_room=rate, log=log)
                    record["repeat"] = repeat
                    results.append(record)
                if size not in settings.single_sizes:
                    continue
                for name in settings.servers:
                    record = _measure(binary, name, size, settings, redis=redis, window=1, log=log)
                    record["repeat"] = repeat
                    results.append(record)
    return {"settings": asdict(settings), "loadavg": _loadavg(), "results": results}


def run_phase(preset: str, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The fan-out phase of a matrix run (``python -m benchmarks run``): its data, or None, said in one line, when
    the generator cannot be built here."""
    try:
        return run_fanout(settings_for(preset), log=log)
    except cbuild.CompilerMissing as exc:
        log(f"  fan-out phase skipped: {exc}")
        return None


@contextmanager
def _maybe_redis(settings: FanoutSettings, log: Callable[[str], None]) -> Iterator[RedisServer | None]:
    if REDIS_MODE not in settings.servers:
        yield None
        return
    try:
        with redis_server() as redis:
            yield redis
    except RedisMissing as exc:
        log(f"  {REDIS_MODE}: skipped: {exc}")
        yield None


def _measure(
    binary: Path,
    name: str,
    size: int,
    settings: FanoutSettings,
    *,
    redis: RedisServer | None,
    rate_per_room: float | None = None,
    window: int | None = None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Start server ``name``, run the generator against it once, stop it; the record (mode "error" on failure)."""
    try:
        server = RunningServer(server_spec(name, redis))
        try:
            wait_rooms_ready(server.port)
            broker = redis.proc.pid if redis is not None and redis.proc is not None and name == REDIS_MODE else None
            record = generate(
                binary, server, size, settings, rate_per_room=rate_per_room, window=window, broker_pid=broker
            )
        finally:
            server.stop()
    except BenchmarkError as exc:
        record = {"mode": "error", "size": size, "error": str(exc)}
    if window == 1 and record["mode"] == "closed":
        record["mode"] = "single"
    record["server"] = name
    log(_summary(record))
    return record


def _loadavg() -> str:
    """The 1, 5 and 15 minute load averages at the end of the run (the machine is shared: say how busy it was)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _summary(record: dict[str, Any]) -> str:
    name = record["server"]
    if record["mode"] == "error":
        return f"  {name:28} size {record.get('size')}: {record['error']}"
    head = f"  {name:28} {record['mode']:6} size {record['size']:<4}"
    if record["mode"] in ("closed", "single"):
        return (
            f"{head} {record['deliveries_per_s']:10.0f} deliveries/s  {per_delivery_us(record):5.2f} us/delivery  "
            f"cpu srv {record['server_cpu']:.2f} gen {record['loadgen_cpu']:.2f} redis {record['broker_cpu']:.2f}  "
            f"loss {record['loss']}"
        )
    return (
        f"{head} {record['offered_per_s']:10.0f} offered/s  p50 {record['p50']:.2f} p99 {record['p99']:.2f} "
        f"p99.9 {record['p999']:.2f} ms  loss {record['loss']}"
    )


def medians(data: dict[str, Any]) -> dict[tuple[str, int, str], dict[str, float]]:
    """Median figures per (server, size, mode) over the repeats."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for record in data["results"]:
        if record["mode"] in ("closed", "open", "single"):
            groups.setdefault((record["server"], record["size"], record["mode"]), []).append(record)
    keys = ("deliveries_per_s", "server_cpu", "loadgen_cpu", "broker_cpu", "p50", "p99", "p999", "offered_per_s")
    out: dict[tuple[str, int, str], dict[str, float]] = {}
    for key, records in groups.items():
        figures = {name: statistics.median(r[name] for r in records) for name in keys}
        figures["us_per_delivery"] = statistics.median(per_delivery_us(r) for r in records)
        figures["broker_us_per_delivery"] = statistics.median(
            r["broker_cpu_s"] * 1e6 / r["deliveries"] if r["deliveries"] else 0.0 for r in records
        )
        figures["loss"] = max(r["loss"] for r in records)
        out[key] = figures
    return out


def target_check(data: dict[str, Any], mode: str = "closed") -> dict[str, Any] | None:
    """The issue's target at room size 100 (medians) in ``mode`` ("closed": the settings' window; "single": one
    message in flight per room), or None if geventchat or the gevent reference is missing."""
    table = medians(data)
    ours = table.get((GEVENTCHAT, TARGET_SIZE, mode))
    reference = table.get((GEVENT_REFERENCE, TARGET_SIZE, mode))
    if ours is None or reference is None or not ours["us_per_delivery"] or not reference["deliveries_per_s"]:
        return None
    per_core = 1e6 / ours["us_per_delivery"]
    # Paired: each repeat's two figures were measured back to back, so background load hit both alike.
    reference_by_repeat = {
        r["repeat"]: r["deliveries_per_s"]
        for r in data["results"]
        if (r["server"], r.get("size"), r["mode"]) == (GEVENT_REFERENCE, TARGET_SIZE, mode)
    }
    ratios = [
        r["deliveries_per_s"] / reference_by_repeat[r["repeat"]]
        for r in data["results"]
        if (r["server"], r.get("size"), r["mode"]) == (GEVENTCHAT, TARGET_SIZE, mode)
        and reference_by_repeat.get(r["repeat"])
    ]
    if not ratios:
        return None
    ratio = statistics.median(ratios)
    return {
        "per_core": per_core,
        "per_core_hit": per_core >= TARGET_PER_CORE,
        "ratio": ratio,
        "ratio_hit": ratio >= TARGET_RATIO,
        "per_core_ratio": per_core / (1e6 / reference["us_per_delivery"]) if reference["us_per_delivery"] else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks fanout``: run the phase and write its report, JSON and plot."""
    from .fanout_report import plot, render

    parser = argparse.ArgumentParser(prog="python -m benchmarks fanout", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(args, plot, render)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", dest="preset", action="store_const", const="quick", help="1.5 s runs, once")
    preset.add_argument("--full", dest="preset", action="store_const", const="full", help="5 s runs, 3 repeats")
    preset.add_argument("--tiny", dest="preset", action="store_const", const="tiny", help="smoke-test size")
    parser.set_defaults(preset="quick")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, help="only these servers")
    parser.add_argument("--sizes", nargs="+", type=int, help="room sizes")
    parser.add_argument("--members", type=int, help="members in all rooms together")
    parser.add_argument("--window", type=int, help="messages in flight per room (closed loop)")
    parser.add_argument("--duration", type=float)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the report")
    parser.add_argument("--name", help="report file stem (default: <date>-fanout)")


def run_command(
    args: argparse.Namespace,
    plot: Callable[[dict[str, Any], Path, str], list[str]],
    render: Callable[[dict[str, Any], str, list[str]], str],
) -> int:
    settings = settings_for(args.preset)
    for name in ("sizes", "members", "window", "duration", "repeats", "servers"):
        value = getattr(args, name)
        if value is not None:
            setattr(settings, name, tuple(value) if isinstance(value, list) else value)
    stem = args.name or f"{datetime.date.today().isoformat()}-fanout"
    print(f"fan-out benchmark ({args.preset}): {', '.join(settings.servers)}; sizes {settings.sizes}", flush=True)
    try:
        data = run_fanout(settings, log=lambda line: print(line, flush=True))
    except cbuild.CompilerMissing as exc:
        print(f"fan-out benchmark: {exc}", file=sys.stderr)
        return 1
    save(data, args.out, stem)
    return write_report(data, args.out, stem, plot, render)


def write_report(
    data: dict[str, Any],
    directory: Path,
    stem: str,
    plot: Callable[[dict[str, Any], Path, str], list[str]],
    render: Callable[[dict[str, Any], str, list[str]], str],
) -> int:
    """Write ``<stem>.md`` and its plot from a fan-out run's data (also ``python -m benchmarks report X.json``)."""
    plots = plot(data, directory, stem)
    path = directory / f"{stem}.md"
    path.write_text(render(data, stem, plots))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
