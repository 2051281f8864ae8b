"""``python -m benchmarks run --quick|--full``: run the matrix, write the report and plots."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from . import fanout, fanout_report
from .report import plot, render
from .runner import BenchmarkError, Generator, Settings, choose_generator, default_servers, run_matrix, save

RESULTS = Path(__file__).parent / "results"


def settings_for(args: argparse.Namespace, generator: Generator) -> Settings:
    if args.preset == "full":
        settings = Settings(duration=5.0, warmup=1.0, repeats=3, hold=15000, hold_many=100_000)
    elif args.preset == "tiny":  # the smoke test's: seconds, not minutes
        settings = Settings(
            duration=1.0,
            warmup=0.3,
            repeats=1,
            connections=(10,),
            hold=50,
            rate_connections=10,
            workers_connections=(10,),
        )
    else:
        settings = Settings(duration=2.0, warmup=0.5, repeats=1, hold=3000)
    if args.duration is not None:
        settings.duration = args.duration
    if args.repeats is not None:
        settings.repeats = args.repeats
    if args.connections:
        settings.connections = tuple(args.connections)
    if args.hold is not None:
        settings.hold = args.hold
    if args.phases:
        settings.phases = tuple(args.phases)
    if args.hold_many is not None:
        settings.hold_many = args.hold_many
    settings.generator = generator
    servers = default_servers()
    if args.servers:
        servers = [s for s in servers if s.name in args.servers]
    settings.servers = servers
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the matrix and write benchmarks/results/<date>.md")
    preset = run.add_mutually_exclusive_group()
    preset.add_argument("--quick", dest="preset", action="store_const", const="quick", help="2 s runs, once (default)")
    preset.add_argument("--full", dest="preset", action="store_const", const="full", help="5 s runs, 3 repeats")
    preset.add_argument("--tiny", dest="preset", action="store_const", const="tiny", help="smoke-test size")
    run.set_defaults(preset="quick")
    run.add_argument("--servers", nargs="+", help="only these servers (names as in the report)")
    run.add_argument("--phases", nargs="+", choices=["echo", "churn", "rate", "hold", "gc", "workers", "fanout"])
    run.add_argument(
        "--generator",
        choices=["c", "python"],
        help="load generator: c (benchmarks/c/loadgen.c) or python (benchmarks/loadgen.py); default: c, or python"
        " with a notice when there is no C compiler",
    )
    run.add_argument("--connections", nargs="+", type=int, help="connection counts for the echo phase")
    run.add_argument("--duration", type=float)
    run.add_argument("--repeats", type=int)
    run.add_argument("--hold", type=int, help="idle connections held (memory, GC, answering)")
    run.add_argument("--hold-many", type=int, help="connections for the multi-worker hold (0 = skip)")
    run.add_argument("--out", type=Path, default=RESULTS, help="directory for the report")
    run.add_argument("--name", help="report file stem (default: today's date)")
    fanout.add_arguments(sub.add_parser("fanout", help="the chat fan-out phase alone: <date>-fanout.md"))
    report = sub.add_parser("report", help="re-render a report from its JSON")
    report.add_argument("json", type=Path)
    args = parser.parse_args(argv)

    if args.command == "fanout":
        return fanout.run_command(args, fanout_report.plot, fanout_report.render)
    if args.command == "report":
        data = json.loads(args.json.read_text())
        directory, stem = args.json.parent, args.json.stem
    else:
        try:
            generator = choose_generator(args.generator, log=lambda line: print(line, flush=True))
            settings = settings_for(args, generator)
        except BenchmarkError as exc:
            print(f"benchmark: {exc}", file=sys.stderr)
            return 1
        stem = args.name or datetime.date.today().isoformat()
        servers = ", ".join(s.name for s in settings.servers)
        print(f"benchmark ({args.preset}, {generator.name} load generator): servers {servers}", flush=True)
        data = run_matrix(settings, log=lambda line: print(line, flush=True))
        # fan-out: asked for by --phases, or by default except in the smoke-test size (it needs redis-server)
        if "fanout" in (args.phases or ([] if args.preset == "tiny" else ["fanout"])):
            fanout_data = fanout.run_phase(args.preset, log=lambda line: print(line, flush=True))
            if fanout_data is not None:
                data["fanout"] = fanout_data
        directory = args.out
        save(data, directory, stem)
    plots = plot(data, directory, stem)
    path = directory / f"{stem}.md"
    path.write_text(render(data, stem, plots))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
