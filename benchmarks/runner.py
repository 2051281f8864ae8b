"""Runs the benchmark matrix: each server in turn on CPU 0, the load generator on CPU 1, repeated, interleaved.

Every server gets the same phases in one invocation, so ratios compare like with like on a shared, noisy machine.
Raw results go to ``benchmarks/results/<date>.json``; :mod:`benchmarks.report` turns them into markdown and plots.

The load generator is the C one (``benchmarks/c/loadgen.c``, compiled at start by :mod:`benchmarks.cbuild`) unless
asked for the Python one (``benchmarks/loadgen.py``) or no C compiler is found; both take the same flags and print
the same records. The C echo server (``benchmarks/c/echo_server.c``) joins the references when it can be built.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geventchat.testing import ServerExited, ServerProcess, WaitTimedOut, descendants, pss_bytes, rss_bytes, summed

from . import cbuild

_CPUS = sorted(os.sched_getaffinity(0))
#: The server's core and the load generator's; ``None`` (no pinning) on a machine with one usable CPU.
SERVER_CPU: int | None = _CPUS[0] if len(_CPUS) > 1 else None
LOADGEN_CPU: int | None = _CPUS[1] if len(_CPUS) > 1 else None
PYTHON = sys.executable


class BenchmarkError(Exception):
    """A server or the load generator did not behave (did not start, crashed, printed nonsense)."""


@dataclass(frozen=True)
class Generator:
    """A load generator program: ``command MODE --port P ...`` prints JSON records (same flags, same keys)."""

    #: ``c`` or ``python``, as recorded in the results.
    name: str
    command: tuple[str, ...]


PYTHON_GENERATOR = Generator("python", (PYTHON, "-m", "benchmarks.loadgen"))
#: Name of the C echo server among the references (``benchmarks/c/echo_server.c``).
C_ECHO = "c-epoll"


def choose_generator(wanted: str | None, log: Any = print) -> Generator:
    """The load generator to use: ``"python"``, ``"c"`` (a missing compiler is an error), or ``None`` for C with a
    one-line notice and the Python one when there is no compiler.

    Raises :class:`BenchmarkError` (one line) if ``"c"`` was asked for and cannot be built.
    """
    if wanted == "python":
        return PYTHON_GENERATOR
    try:
        return Generator("c", (str(cbuild.build("loadgen")),))
    except cbuild.CompilerMissing as exc:
        if wanted == "c":
            raise BenchmarkError(f"--generator c: {exc}") from exc
        log(f"{exc}: falling back to the Python load generator (benchmarks/loadgen.py), C echo server left out")
        return PYTHON_GENERATOR
    except cbuild.BuildFailed as exc:
        raise BenchmarkError(str(exc)) from exc


def c_echo_server() -> ServerSpec | None:
    """The C echo server's spec, or None when there is no C compiler (:func:`choose_generator` said so)."""
    try:
        binary = cbuild.build("echo_server")
    except cbuild.CompilerMissing:
        return None
    except cbuild.BuildFailed as exc:
        raise BenchmarkError(str(exc)) from exc
    return ServerSpec(C_ECHO, (str(binary), "--port", "0", "--name", C_ECHO))


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server under test. ``command`` must print ``NAME listening on HOST:PORT`` on stdout when
    ready (:func:`geventchat.testing.format_listening_line`)."""

    name: str
    command: tuple[str, ...]
    #: Sum PSS (not RSS) over the process tree: for servers that fork per client or per worker.
    forks: bool = False
    #: Phases this server takes part in (``None``: all).
    phases: frozenset[str] | None = None
    #: Pin to the server CPU (multi-worker servers use every core).
    pinned: bool = True
    #: Idle connections to hold in the hold phase, if not the matrix's (a process per client cannot hold 15,000).
    hold: int | None = None
    #: Echo-phase connection counts this server takes part in (``None``: all of the matrix's).
    connections: tuple[int, ...] | None = None
    #: Extra load generator arguments (the iterative model greets one client at a time: do not wait long).
    loadgen_args: tuple[str, ...] = ()


def geventchat_command(*extra: str) -> tuple[str, ...]:
    return (
        PYTHON,
        "-m",
        "geventchat",
        "serve",
        "--port",
        "0",
        "--stats-interval",
        "0",
        "--log-level",
        "WARNING",
        "--grace",
        "0",
        *extra,
    )


def reference_command(name: str) -> tuple[str, ...]:
    return (PYTHON, "-m", "benchmarks.refservers", name, "--port", "0")


def geventchat_supports(flag: str) -> bool:
    """True if this checkout's ``geventchat serve`` accepts ``flag`` (models and workers land separately)."""
    result = subprocess.run(
        [PYTHON, "-m", "geventchat", "serve", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    return flag in result.stdout


def default_servers() -> list[ServerSpec]:
    """geventchat (and its comparison models, when this checkout has them) and the reference servers."""
    specs = [ServerSpec("geventchat", geventchat_command())]
    if geventchat_supports("--gc-tuning"):
        specs.append(
            ServerSpec("geventchat gc-untuned", geventchat_command("--gc-tuning", "off"), phases=frozenset({"hold"}))
        )
    if geventchat_supports("--model"):
        specs.append(ServerSpec("geventchat thread", geventchat_command("--model", "thread"), hold=5000))
        specs.append(
            ServerSpec(
                "geventchat process",
                geventchat_command("--model", "process"),
                forks=True,
                phases=frozenset({"echo", "churn", "hold"}),
                hold=200,
                connections=(10, 100),
            )
        )
        specs.append(
            ServerSpec(
                "geventchat iterative",
                geventchat_command("--model", "iterative"),
                phases=frozenset({"echo"}),
                connections=(10,),
                loadgen_args=("--greet-timeout", "3"),
            )
        )
    from .refservers import NAMES

    c_echo = c_echo_server()
    if c_echo is not None:
        specs.append(c_echo)
    specs.extend(ServerSpec(name, reference_command(name)) for name in NAMES)
    return specs


@dataclass
class Settings:
    """One benchmark configuration (``--quick`` / ``--full`` presets in :mod:`benchmarks.__main__`)."""

    duration: float = 5.0
    warmup: float = 1.0
    repeats: int = 3
    connections: tuple[int, ...] = (10, 100, 1000)
    churn_concurrency: int = 50
    hold: int = 15000
    rate_connections: int = 1000
    rate_fraction: float = 0.5
    #: Whose closed-loop maximum sets the rate phase's offered load: the same absolute rate for every server, so
    #: their p99s compare at equal load (a server missing from the run uses its own).
    rate_basis: str = "geventchat"
    #: Loopback source addresses for churn: each cycle leaves a TIME_WAIT entry for 60 s, so thousands of cycles
    #: per second need more (source, port) pairs than four addresses give.
    churn_sources: int = 32
    #: Echo connection counts for the workers phase (geventchat --workers 1 vs 2, generator sharing the cores).
    workers_connections: tuple[int, ...] = (100, 1000)
    phases: tuple[str, ...] = ("echo", "churn", "rate", "hold", "gc", "workers")
    generator: Generator = PYTHON_GENERATOR
    #: Idle connections for the many-connections hold (geventchat with workers; 0 = skip), once per invocation.
    hold_many: int = 0
    hold_many_workers: int = 8
    hold_many_processes: int = 6
    servers: list[ServerSpec] = field(default_factory=default_servers)


class RunningServer:
    """A server process in its own session (so its whole tree can be killed), pinned if asked.

    The runner is gevent-free (it only starts processes and reads pipes): its waits sleep plainly."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        cpus = {SERVER_CPU} if spec.pinned and SERVER_CPU is not None else None
        try:
            self.process = ServerProcess(
                command=spec.command, name=None, start_timeout=30, cpus=cpus, new_session=True, use_gevent=False
            )
        except (ServerExited, WaitTimedOut) as exc:
            raise BenchmarkError(f"{spec.name} did not start: {exc}") from exc
        self.port = self.process.port
        self.pid = self.process.pid

    def memory(self) -> int:
        return summed(pss_bytes if self.spec.forks else rss_bytes, descendants(self.pid))

    def stop(self) -> None:
        self.process.kill()


def run_json(command: list[str], *, timeout: float, what: str) -> dict[str, Any]:
    """Run a measuring process (a load generator, the GC probe) to its end; its record is the last JSON line it
    printed. Raises :class:`BenchmarkError` naming ``what`` if it failed, printed none or overran ``timeout``."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"{what} did not finish within {timeout:.0f}s") from exc
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise BenchmarkError(f"{what} failed: {result.stderr.strip()[-500:]}")
    record: dict[str, Any] = json.loads(lines[-1])
    return record


def loadgen(
    mode: str,
    server: RunningServer,
    *args: str,
    generator: Generator = PYTHON_GENERATOR,
    pinned: bool = True,
    timeout: float = 300,
) -> dict[str, Any]:
    """Run one load generator process (on the load generator CPU if ``pinned``); returns its JSON result."""
    command = [
        *generator.command,
        mode,
        "--port",
        str(server.port),
        "--server-pid",
        str(server.pid),
        *args,
    ]
    if pinned and LOADGEN_CPU is not None:
        command += ["--cpu", str(LOADGEN_CPU)]
    record = run_json(command, timeout=timeout, what=f"load generator ({generator.name}) {mode}")
    record["generator"] = generator.name
    # CPU shares are of one core for the generator (single-threaded) and of the cores the server may use.
    record["server_cores"] = 1 if server.spec.pinned and SERVER_CPU is not None else len(_CPUS)
    record["generator_pinned"] = pinned and LOADGEN_CPU is not None
    return record


def hold(
    server: RunningServer,
    count: int,
    *,
    processes: int = 1,
    sources_each: int = 4,
    opening: int = 10,
    generator: Generator = PYTHON_GENERATOR,
) -> dict[str, Any]:
    """Open ``count`` idle connections (spread over load generator processes and source addresses), measure the
    server's memory before and after, then check that every connection still answers."""
    before = server.memory()
    each = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    started = time.perf_counter()
    procs = []
    for index, share in enumerate(each):
        command = [
            *generator.command,
            "hold",
            "--port",
            str(server.port),
            "--connections",
            str(share),
            "--sources",
            str(sources_each),
            "--first-source",
            str(1 + index * sources_each),
            "--opening",
            str(opening),
        ]
        if processes == 1 and LOADGEN_CPU is not None:
            command += ["--cpu", str(LOADGEN_CPU)]
        procs.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    try:
        opened = [_read_record(p, 600) for p in procs]
        open_seconds = time.perf_counter() - started
        time.sleep(1.0)  # let the timeout lines land and the server settle
        after = server.memory()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("check\n")
            p.stdin.flush()
        checked = [_read_record(p, 120) for p in procs]
    finally:
        for p in procs:
            try:
                assert p.stdin is not None
                p.stdin.write("close\n")
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    held = sum(r["opened"] for r in opened)
    return {
        "mode": "hold",
        "generator": generator.name,
        "connections": count,
        "opened": held,
        "answered": sum(r["answered"] for r in checked),
        "open_seconds": open_seconds,
        "memory_before": before,
        "memory_after": after,
        "bytes_per_connection": (after - before) / held if held else 0.0,
        # Worst of the processes' percentiles: a conservative figure for the whole.
        "handshake_p50": max(r["handshake_p50"] for r in opened),
        "handshake_p99": max(r["handshake_p99"] for r in opened),
        "handshake_max": max(r["handshake_max"] for r in opened),
    }


def gc_pauses(connections: int, tuning: str) -> dict[str, Any]:
    """Collector pauses inside a geventchat server taking on ``connections`` (see :mod:`benchmarks.gcpause`)."""
    command = [PYTHON, "-m", "benchmarks.gcpause", "--connections", str(connections), "--gc-tuning", tuning]
    if SERVER_CPU is not None and LOADGEN_CPU is not None:
        command += ["--cpu", str(SERVER_CPU), "--loadgen-cpu", str(LOADGEN_CPU)]
    return run_json(command, timeout=600, what="gc pause measurement")


def _read_record(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("{"):
        raise BenchmarkError(f"hold load generator said {line!r}")
    record: dict[str, Any] = json.loads(line)
    return record


def run_matrix(settings: Settings, log: Any = print) -> dict[str, Any]:
    """Run every phase for every server, ``settings.repeats`` times.

    Within a repeat every server is started at once (idle servers cost nothing) and each measurement is taken for
    all servers back to back, so background load on a shared machine hits them alike.
    """
    timing = ["--duration", str(settings.duration), "--warmup", str(settings.warmup)]
    results: list[dict[str, Any]] = []
    generator = settings.generator

    def record(spec: ServerSpec, repeat: int, result: dict[str, Any]) -> None:
        result.update(server=spec.name, repeat=repeat)
        results.append(result)
        log(_summary(result))

    for repeat in range(settings.repeats):
        running: dict[str, RunningServer] = {}
        for spec in settings.servers:
            try:
                running[spec.name] = RunningServer(spec)
            except BenchmarkError as exc:
                log(f"  {spec.name}: {exc}")
                results.append({"server": spec.name, "repeat": repeat, "mode": "error", "error": str(exc)})
        best: dict[str, float] = {}
        try:
            for phase in settings.phases:
                steps: list[tuple[str, ...]] = []
                if phase == "echo":
                    steps = [("--connections", str(n), *timing) for n in settings.connections]
                elif phase == "churn":
                    sources = ("--sources", str(settings.churn_sources))
                    steps = [("--connections", str(settings.churn_concurrency), *sources, *timing)]
                elif phase in ("rate", "hold"):
                    steps = [()]
                for step in steps:
                    for spec in settings.servers:
                        server = running.get(spec.name)
                        if server is None or (spec.phases is not None and phase not in spec.phases):
                            continue
                        if phase == "echo" and spec.connections is not None and int(step[1]) not in spec.connections:
                            continue
                        try:
                            if phase == "rate":
                                basis = settings.rate_basis if settings.rate_basis in best else spec.name
                                if basis not in best:
                                    continue
                                rate = best[basis] * settings.rate_fraction
                                args = ("--connections", str(settings.rate_connections), "--rate", f"{rate:.0f}")
                                result = loadgen("rate", server, *args, *timing, generator=generator)
                                result["rate_basis"] = basis
                            elif phase == "hold":
                                count = spec.hold if spec.hold is not None else settings.hold
                                result = hold(server, count, generator=generator)
                            else:
                                result = loadgen(phase, server, *step, *spec.loadgen_args, generator=generator)
                        except BenchmarkError as exc:
                            log(f"  {spec.name} {phase}: {exc}")
                            result = {"mode": "error", "phase": phase, "error": str(exc)}
                        if phase == "echo" and result.get("connections") == settings.rate_connections:
                            best[spec.name] = result["replies_per_s"]
                        record(spec, repeat, result)
        finally:
            for server in running.values():
                server.stop()
        if "workers" in settings.phases and geventchat_supports("--workers"):
            for spec, result in measure_workers(settings, timing):
                record(spec, repeat, result)
        if "gc" in settings.phases and any(spec.name == "geventchat" for spec in settings.servers):
            for tuning in ("off", "on"):
                spec = ServerSpec(f"geventchat gc {tuning}", ())
                try:
                    result = gc_pauses(settings.hold, tuning)
                except BenchmarkError as exc:
                    result = {"mode": "error", "phase": "gc", "error": str(exc)}
                record(spec, repeat, result)
    if settings.hold_many and geventchat_supports("--workers"):
        workers = settings.hold_many_workers
        spec = ServerSpec(
            f"geventchat {workers} workers", geventchat_command("--workers", str(workers)), forks=True, pinned=False
        )
        try:
            server = RunningServer(spec)
            try:
                result = hold(
                    server,
                    settings.hold_many,
                    processes=settings.hold_many_processes,
                    opening=50,
                    generator=generator,
                )
            finally:
                server.stop()
        except BenchmarkError as exc:
            result = {"mode": "error", "phase": "hold-many", "error": str(exc)}
        result["mode"] = "hold-many" if result["mode"] == "hold" else result["mode"]
        record(spec, 0, result)
    return {
        "settings": {
            "duration": settings.duration,
            "warmup": settings.warmup,
            "repeats": settings.repeats,
            "connections": list(settings.connections),
            "churn_concurrency": settings.churn_concurrency,
            "hold": settings.hold,
            "rate_connections": settings.rate_connections,
            "rate_fraction": settings.rate_fraction,
            "rate_basis": settings.rate_basis,
            "workers_connections": list(settings.workers_connections),
            "generator": generator.name,
            "servers": [s.name for s in settings.servers],
        },
        "results": results,
    }


def measure_workers(settings: Settings, timing: list[str]) -> list[tuple[ServerSpec, dict[str, Any]]]:
    """geventchat ``--workers 1`` and ``--workers 2``, unpinned, with the load generator unpinned too: on a 2-core
    machine the generator cannot have a core of its own, so the figure that means something is the server's CPU per
    reply (its tree's CPU over the replies), not a throughput ratio. Records have mode ``workers``."""
    measured: list[tuple[ServerSpec, dict[str, Any]]] = []
    for workers in (1, 2):
        spec = ServerSpec(
            f"geventchat --workers {workers}",
            geventchat_command("--workers", str(workers)),
            forks=True,
            pinned=False,
            phases=frozenset({"workers"}),
        )
        try:
            server = RunningServer(spec)
        except BenchmarkError as exc:
            measured.append((spec, {"mode": "error", "phase": "workers", "error": str(exc)}))
            continue
        try:
            for n in settings.workers_connections:
                try:
                    args = ("--connections", str(n), *timing)
                    result = loadgen("echo", server, *args, generator=settings.generator, pinned=False)
                    result.update(mode="workers", workers=workers)
                except BenchmarkError as exc:
                    result = {"mode": "error", "phase": "workers", "error": str(exc)}
                measured.append((spec, result))
        finally:
            server.stop()
    return measured


def _summary(record: dict[str, Any]) -> str:
    name, mode = record["server"], record["mode"]
    if mode == "echo":
        return (
            f"  {name:24} echo@{record['connections']:<5} {record['replies_per_s']:9.0f}/s  "
            f"p50 {record['p50']:.2f} p99 {record['p99']:.2f} ms errors {record['errors']}  "
            f"cpu srv {record.get('server_cpu', 0):.2f} "
            f"gen {record['loadgen_cpu']:.2f}"
        )
    if mode == "workers":
        per_reply = record.get("server_cpu", 0) / record["replies_per_s"] * 1e6 if record["replies_per_s"] else 0
        return (
            f"  {name:24} echo@{record['connections']:<5} {record['replies_per_s']:9.0f}/s  "
            f"cpu srv {record.get('server_cpu', 0):.2f} gen {record['loadgen_cpu']:.2f}  {per_reply:.1f} µs/reply"
        )
    if mode == "rate":
        return (
            f"  {name:24} rate@{record['connections']:<5} {record['offered_per_s']:7.0f} offered "
            f"{record['replies_per_s']:7.0f}/s p99 {record['p99']:.2f} ms errors {record['errors']}"
        )
    if mode == "churn":
        rate = record["cycles_per_s"]
        return (
            f"  {name:24} churn@{record['concurrency']} {rate:8.0f} cycles/s errors {record['errors']}"
            f"  cpu srv {record.get('server_cpu', 0):.2f} gen {record['loadgen_cpu']:.2f}"
        )
    if mode == "gc":
        return (
            f"  {name:24} gc: collections {record['collections']} longest full "
            f"{record['full_collection_max_ms']:.1f} ms, longest {record['pause_max_ms']:.1f} ms, "
            f"total {record['pause_total_ms']:.0f} ms; handshake p99 {record['handshake_p99']:.1f} ms"
        )
    if mode == "hold":
        return (
            f"  {name:24} hold {record['opened']}/{record['connections']} in {record['open_seconds']:.1f}s "
            f"{record['bytes_per_connection'] / 1024:.1f} KB/conn handshake p99 {record['handshake_p99']:.1f} ms "
            f"answered {record['answered']}"
        )
    return f"  {name}: {record}"


def save(data: dict[str, Any], directory: Path, stem: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.json"
    path.write_text(json.dumps(data, indent=1))
    return path
