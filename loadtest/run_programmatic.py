"""Run the load test in-process (a Locust ``Environment`` with a local runner) and print a JSON summary.

    python loadtest/run_programmatic.py --host 127.0.0.1:8888 --users 20 --seconds 3 ChatUser [--gc-think-time 0 ...]

The tests run this in a subprocess (importing Locust monkey-patches the whole process, which the test process must
not be), and ``benchmarks/bench_locust.py`` uses it to measure a steady window precisely. Options it does not know
are passed to Locust's own parser, so every ``--gc-*`` option works. The JSON (one object on stdout)::

    {"requests": {"echo": 1234, ...}, "failures": {"echo": 0, ...},
     "by_scenario": {"ChatUser": {"echo": {"requests": 1200, "failures": 0}, ...}, ...},
     "causes": {"connect": {"connection refused": 17}, ...},
     "latency_us": [{"scenario": "ChatUser", "step": "echo", "count": 1234, "p50": 41, ...}, ...],
     "locust_median_ms": {"echo": 0.04, ...},
     "fanout": {"sent": 90, "refused": 0, "expected": 180, "delivered": 180, "loss": 0, "loss_ratio": 0.0},
     "window": {"seconds": 2.0, "requests": 80000, "requests_per_s": 40000.0, "cpu_us_per_request": 24.1},
     "exit_code": 0}

``requests``, ``failures``, ``causes`` and ``locust_median_ms`` are per step over every scenario (the request type is
the scenario; ``by_scenario`` keeps them apart). ``window`` counts the ``--measure-step`` step (default ``echo``, every
scenario's) between ``--warmup`` seconds after every user has started and the end of the run, with the process's CPU
time over the same window.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

#: The load tester's locustfile, next to this file (it imports the users from the installed geventchat.loadtest).
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def _load_locustfile(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("locustfile", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["locustfile"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("user_classes", nargs="+", help="User classes to run (ChatUser, IdleUser, ...)")
    parser.add_argument("--host", default="", help="tcp://HOST:PORT or HOST:PORT")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--spawn-rate", type=float, default=0.0, help="users/s (default: all at once)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds to run once every user has started")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds after spawning before the window opens")
    parser.add_argument("--measure-step", default="echo", help="step counted in the window (default echo)")
    parser.add_argument("--spawn-timeout", type=float, default=60.0, help="seconds allowed for spawning")
    parser.add_argument("--locustfile", default=str(LOCUSTFILE), help="default: loadtest/locustfile.py")
    args, locust_args = parser.parse_known_args(argv)

    module = _load_locustfile(Path(args.locustfile))
    from locust import events
    from locust.argument_parser import get_parser
    from locust.env import Environment

    options = get_parser(default_config_files=[]).parse_args(
        ["--headless", *(["--host", args.host] if args.host else []), *locust_args]
    )
    user_classes = [getattr(module, name) for name in args.user_classes]
    environment = Environment(user_classes=user_classes, events=events, host=args.host or None, parsed_options=options)
    runner = environment.create_local_runner()
    try:
        events.init.fire(environment=environment, runner=runner, web_ui=None)
    except SystemExit as exc:
        print(json.dumps({"exit_code": exc.code}))
        return int(exc.code) if isinstance(exc.code, int) else 2

    window = _run(runner, args)
    spawned = runner.user_count
    runner.quit()
    events.quitting.fire(environment=environment, reverse=True)
    exit_code = 1 if runner.stats.errors or runner.exceptions else 0
    events.quit.fire(exit_code=exit_code)
    summary = {"users": spawned, **_figures(environment, runner), "window": window, "exit_code": exit_code}
    print(json.dumps(summary, ensure_ascii=False))
    return exit_code


def _run(runner: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Start the users, wait until all run plus the warm-up, and measure ``--measure-step`` for ``--seconds``:
    the window's requests, requests/s and this process's CPU µs per request."""
    import gevent  # after the locustfile, which imports Locust: Locust monkey-patches on import

    runner.start(args.users, spawn_rate=args.spawn_rate or args.users)
    deadline = time.monotonic() + args.spawn_timeout
    while runner.user_count < args.users and time.monotonic() < deadline:
        gevent.sleep(0.05)
    gevent.sleep(args.warmup)
    first = (time.perf_counter(), time.process_time(), _step_requests(runner, args.measure_step))
    gevent.sleep(args.seconds)
    last = (time.perf_counter(), time.process_time(), _step_requests(runner, args.measure_step))
    seconds, cpu, counted = last[0] - first[0], last[1] - first[1], last[2] - first[2]
    return {
        "seconds": round(seconds, 3),
        "requests": counted,
        "requests_per_s": round(counted / seconds, 1) if seconds else 0.0,
        "cpu_us_per_request": round(cpu / counted * 1e6, 2) if counted else None,
    }


def _step_requests(runner: Any, step: str) -> int:
    """Requests of one step so far, over every scenario (request type)."""
    return sum(entry.num_requests for (name, _type), entry in list(runner.stats.entries.items()) if name == step)


def _figures(environment: Any, runner: Any) -> dict[str, Any]:
    """Requests, failures and their causes per step (and per scenario), the µs latency rows, Locust's medians per
    step (from its merged histogram), the exceptions."""
    from locust.stats import StatsEntry  # Locust is imported by now (the locustfile did)

    entries = sorted(runner.stats.entries.items())
    requests: dict[str, int] = {}
    failures: dict[str, int] = {}
    by_scenario: dict[str, dict[str, dict[str, int]]] = {}
    merged: dict[str, Any] = {}
    for (name, scenario), entry in entries:
        requests[name] = requests.get(name, 0) + entry.num_requests
        failures[name] = failures.get(name, 0) + entry.num_failures
        by_scenario.setdefault(scenario, {})[name] = {"requests": entry.num_requests, "failures": entry.num_failures}
        merged.setdefault(name, StatsEntry(runner.stats, name, "")).extend(entry)
    causes: dict[str, dict[str, int]] = {}
    for error in runner.stats.errors.values():
        by_cause = causes.setdefault(error.name, {})
        by_cause[str(error.error)] = by_cause.get(str(error.error), 0) + error.occurrences
    recorder = getattr(environment, "geventchat_latency", None)
    tally = getattr(environment, "geventchat_fanout", None)
    return {
        "requests": requests,
        "failures": failures,
        "by_scenario": by_scenario,
        "causes": causes,
        "latency_us": [row.__dict__ for row in recorder.rows()] if recorder is not None else [],
        "locust_median_ms": {name: entry.median_response_time for name, entry in merged.items()},
        "exceptions": [str(e["msg"]) for e in runner.exceptions.values()],
        "fanout": tally.as_dict() if tally is not None else None,
    }


if __name__ == "__main__":
    sys.exit(main())
