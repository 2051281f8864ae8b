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

The users, their options and listeners are the installed package ``geventchat.loadtest`` (the ``loadtest``
extra); this file only names the scenarios Locust runs. A locustfile of your own can import them the same way.
"""

from __future__ import annotations

from geventchat.loadtest import ChatUser, ChurnUser, IdleUser, TimeoutUser

__all__ = ["ChatUser", "ChurnUser", "IdleUser", "TimeoutUser"]
