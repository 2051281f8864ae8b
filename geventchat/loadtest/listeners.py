"""The load tester's listeners on Locust's events, and the ``--gc-shape`` load shape they install.

- ``init_command_line_parser``: the ``--gc-*`` options (:func:`~geventchat.loadtest.settings.add_arguments`).
- ``init``: checks the host and the options before any user starts (exit code 2 if they are unusable), installs
  :class:`SteppedShape` for ``--gc-shape``, ships the µs histograms from workers to the master and merges them
  there, prints and writes the µs table (and ``--gc-hlog``, and its section of ``--html``) when Locust quits, and
  adds the "Latency (microseconds)" web UI tab (:mod:`.webui`) and the plain-text ``/geventchat/latency`` page.
- ``test_start``: a fresh :class:`~geventchat.loadtest.session.RunContext` per test run.

:mod:`geventchat.loadtest.users` calls :func:`install` when it is imported. Importing this module imports Locust,
and raises :class:`~geventchat.loadtest.compat.LocustTooOld` on a Locust without the response-time bucketing hook.
"""

from __future__ import annotations

from typing import Any

import locust
import locust.stats
from locust import LoadTestShape
from locust.runners import MasterRunner, WorkerRunner

from .compat import check_locust
from .latency import LatencyRecorder, fine_bucket
from .report import finish_run, latency_page, recorder_of
from .rooms import fanout_of
from .session import RunContext, log, start_run
from .settings import BadSettings, Settings, StepSpec, add_arguments
from .target import BadTarget, parse_targets
from .webui import install_tab

# Before anything is installed: an older Locust would take the bucketing override below and ignore it.
check_locust(str(getattr(locust, "__version__", "")), hasattr(locust.stats, "bucket_response_time"))

__all__ = ["SteppedShape", "install"]


class SteppedShape(LoadTestShape):
    """``--gc-shape``: +STEP users every EVERY seconds up to MAX, hold, stop. Installed by the ``init`` listener
    only when the option is given (a locustfile that imported this class would have Locust use it always)."""

    def __init__(self, spec: StepSpec) -> None:
        super().__init__()
        self.spec = spec

    def tick(self) -> tuple[int, float] | None:
        users = self.spec.users_at(self.get_run_time())
        return None if users is None else (users, self.spec.spawn_rate)


def install(events: Any) -> None:
    """Add the load tester's listeners to Locust's ``events`` (once: a second call changes nothing)."""
    if getattr(events, "geventchat_installed", False):
        return
    events.geventchat_installed = True
    events.init_command_line_parser.add_listener(_add_options)
    events.init.add_listener(_on_init)
    events.test_start.add_listener(_on_test_start)
    events.test_stopping.add_listener(_on_test_stopping)


def _add_options(parser: Any, **_kwargs: Any) -> None:
    add_arguments(parser)


def _on_init(environment: Any, runner: Any = None, web_ui: Any = None, **_kwargs: Any) -> None:
    # Two significant digits below 100 ms in Locust's own tables too (its default rounds to whole milliseconds).
    # (Locust annotates the bucket as an int; a float is as good a dictionary key and percentile value.)
    locust.stats.bucket_response_time = fine_bucket  # type: ignore[assignment]
    recorder = recorder_of(environment)
    tally = fanout_of(environment)
    if isinstance(runner, WorkerRunner):
        environment.events.report_to_master.add_listener(
            lambda client_id, data, **_kw: data.__setitem__("geventchat_latency", recorder.take_report())
        )
        environment.events.report_to_master.add_listener(
            lambda client_id, data, **_kw: data.__setitem__("geventchat_fanout", tally.take_report())
        )
    else:
        _check_and_shape(environment, runner)
        _merge_and_report(environment, runner, recorder)
    if web_ui is not None:
        install_tab(environment, web_ui, recorder)
        latency_page(web_ui, recorder)


def _check_and_shape(environment: Any, runner: Any) -> None:
    """Fail before any user starts (a worker gets its host and options from the master, which checks them here);
    install the stepped shape if ``--gc-shape`` asks for one."""
    options = environment.parsed_options
    try:
        settings = Settings.from_options(options)
        if environment.host or (options is not None and (options.headless or options.autostart)):
            parse_targets(environment.host)
    except (BadTarget, BadSettings) as exc:
        log.error("geventchat load test: %s", exc)
        raise SystemExit(2) from None
    if settings.shape is not None:
        shape = SteppedShape(settings.shape)
        shape.runner = runner
        environment.shape_class = shape


def _merge_and_report(environment: Any, runner: Any, recorder: LatencyRecorder) -> None:
    """On the master (or a local runner): merge the workers' histograms, reset with Locust's statistics, and print
    and write the µs table at the end."""
    if isinstance(runner, MasterRunner):
        environment.events.worker_report.add_listener(
            lambda client_id, data, **_kw: recorder.add_report(data.get("geventchat_latency") or {})
        )
        tally = fanout_of(environment)
        environment.events.worker_report.add_listener(
            lambda client_id, data, **_kw: tally.add_report(data.get("geventchat_fanout") or {})
        )
    # Workers report deltas, so resetting the merged figures here is a full reset (web UI, --reset-stats).
    environment.events.reset_stats.add_listener(lambda **_kw: recorder.reset())
    environment.events.spawning_complete.add_listener(
        lambda **_kw: recorder.reset() if environment.reset_stats else None
    )
    # `quit` comes after Locust's own tables are printed, so the µs table ends the output.
    environment.events.quit.add_listener(lambda **_kw: finish_run(environment))


def _on_test_stopping(environment: Any, **_kwargs: Any) -> None:
    # RoomUsers stop sending before any user leaves, so the fan-out counts stay exact to the end.
    context: RunContext | None = getattr(environment, "geventchat_run", None)
    if context is not None:
        context.stopping = True


def _on_test_start(environment: Any, **_kwargs: Any) -> None:
    recorder_of(environment).reset()
    fanout_of(environment).reset()
    if isinstance(environment.runner, MasterRunner):
        return  # the users run on the workers
    try:
        start_run(environment)
    except (BadTarget, BadSettings) as exc:
        # Only reachable from the web UI (init checked the command line): the users will not start.
        log.error("geventchat load test: %s", exc)
