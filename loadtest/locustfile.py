"""Load-test a geventchat server (or anything speaking its protocol) with Locust.

    locust -f loadtest/locustfile.py --headless -u 100 -r 50 -t 30s --host tcp://127.0.0.1:8888 ChatUser

Scenarios (pick with Locust's class arguments, ``--class-picker`` in the web UI, or run them all):

- ``ChatUser``: connect, greeting, timeout, then echoes with ``--gc-think-time`` between them; ``:q`` on stop.
- ``IdleUser``: holds its connection and speaks once just before its idle timeout (how many clients are kept).
- ``ChurnUser``: connect, greeting, one echo, ``:q``, repeat (connection setup and teardown rate).
- ``TimeoutUser``: negotiates ``--gc-short-timeout``, goes silent, expects ``bye: idle timeout`` on time.

Statistics rows are named by step (``connect``, ``greeting``, ``timeout``, ``echo``, ``idle``, ``quit``, ``bye``);
failures by cause. At the end a µs latency table (HdrHistogram) is printed and, with ``--csv PREFIX`` or
``--gc-latency-file``, written as CSV and JSON. ``README.md`` ("Load testing with Locust") and
``docs/loadtest.md`` have the details.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# `locust -f loadtest/locustfile.py` imports this file as a top-level module: make the repository importable so
# the helpers load as the `loadtest` package whatever the working directory.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import locust.stats  # noqa: E402
from locust import events, task  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402

from loadtest import tcp_user  # noqa: E402  (a module, not the shape class: Locust would use any shape it sees)
from loadtest.latency import fine_bucket  # noqa: E402
from loadtest.report import finish_run, latency_page, recorder_of  # noqa: E402
from loadtest.settings import BadSettings, Settings, add_arguments  # noqa: E402
from loadtest.target import BadTarget, parse_targets  # noqa: E402
from loadtest.tcp_user import GeventChatUser, log, start_run  # noqa: E402

# --------------------------------------------------------------------------------------------------- scenarios


class ChatUser(GeventChatUser):
    """Connect, read the greeting, send ``--gc-timeout``; then echo ``--gc-message-size`` messages with
    ``--gc-think-time`` between them, checking each reply byte for byte. Sends ``:q`` when stopped."""

    @task
    def chat(self) -> None:
        session = self.session
        if session is not None and (session.client is not None or session.connect(self.settings.timeout)):
            session.echo()


class IdleUser(GeventChatUser):
    """Hold a connection: connect, then stay silent until ``--gc-idle-margin`` seconds before the negotiated idle
    timeout runs out, send one message (step ``idle``), and repeat. Measures how many clients a server keeps."""

    def wait_time(self) -> float:
        session = self.session
        return self.settings.idle_hold if session is not None and session.connected else 0.0

    @task
    def keep_alive(self) -> None:
        session = self.session
        if session is None:
            return
        if session.connected:
            session.echo("idle")
        else:
            session.connect(self.settings.timeout)


class ChurnUser(GeventChatUser):
    """Connection setup and teardown: connect, greeting, timeout, one echo, ``:q``, close; repeat."""

    @task
    def churn(self) -> None:
        session = self.session
        if session is not None and session.connect(self.settings.timeout) and session.echo():
            session.quit()


class TimeoutUser(GeventChatUser):
    """Negotiate ``--gc-short-timeout``, send one message, go silent, and expect the server's ``bye: idle timeout``
    no earlier than the timeout and no later than ``--gc-timeout-tolerance`` after it (step ``bye``; its response
    time is how late the bye came). Closing early, late or without a ``bye:`` is a failure."""

    @task
    def idle_timeout(self) -> None:
        session = self.session
        settings = self.settings
        if session is not None and session.connect(settings.short_timeout) and session.echo():
            session.await_idle_bye(settings.short_timeout, settings.tolerance)


# --------------------------------------------------------------------------------------------------- events


@events.init_command_line_parser.add_listener
def _add_options(parser: Any, **_kwargs: Any) -> None:
    add_arguments(parser)


@events.init.add_listener
def _on_init(environment: Any, runner: Any = None, web_ui: Any = None, **_kwargs: Any) -> None:
    # Two significant digits below 100 ms in Locust's own tables too (its default rounds to whole milliseconds).
    # (Locust annotates the bucket as an int; a float is as good a dictionary key and percentile value.)
    locust.stats.bucket_response_time = fine_bucket  # type: ignore[assignment]
    recorder = recorder_of(environment)
    worker = isinstance(runner, WorkerRunner)
    options = environment.parsed_options
    if not worker:
        # Fail before any user starts: a worker gets its host and options from the master, which checks them here.
        try:
            settings = Settings.from_options(options)
            if environment.host or (options is not None and (options.headless or options.autostart)):
                parse_targets(environment.host)
        except (BadTarget, BadSettings) as exc:
            log.error("geventchat load test: %s", exc)
            raise SystemExit(2) from None
        if settings.shape is not None:
            shape = tcp_user.SteppedShape(settings.shape)
            shape.runner = runner
            environment.shape_class = shape
    if worker:
        environment.events.report_to_master.add_listener(
            lambda client_id, data, **_kw: data.__setitem__("geventchat_latency", recorder.take_report())
        )
    elif isinstance(runner, MasterRunner):
        environment.events.worker_report.add_listener(
            lambda client_id, data, **_kw: recorder.add_report(data.get("geventchat_latency") or {})
        )
    if not worker:
        # Workers report deltas, so resetting the merged figures here is a full reset (web UI, --reset-stats).
        environment.events.reset_stats.add_listener(lambda **_kw: recorder.reset())
        environment.events.spawning_complete.add_listener(
            lambda **_kw: recorder.reset() if environment.reset_stats else None
        )
        # `quit` comes after Locust's own tables are printed, so the µs table ends the output.
        environment.events.quit.add_listener(lambda **_kw: finish_run(environment))
    if web_ui is not None:
        latency_page(web_ui, recorder)


@events.test_start.add_listener
def _on_test_start(environment: Any, **_kwargs: Any) -> None:
    recorder_of(environment).reset()
    if isinstance(environment.runner, MasterRunner):
        return  # the users run on the workers
    try:
        start_run(environment)
    except (BadTarget, BadSettings) as exc:
        # Only reachable from the web UI (init checked the command line): the users will not start.
        log.error("geventchat load test: %s", exc)
