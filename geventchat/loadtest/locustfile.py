"""The packaged locustfile: ``geventchat loadtest`` (or ``python -m geventchat.loadtest``) runs Locust with it.

    geventchat loadtest --headless -u 100 -r 50 -t 30s --host tcp://127.0.0.1:8888 ChatUser

Scenarios (pick with Locust's class arguments, ``--class-picker`` in the web UI, or run them all):

- ``ChatUser``: connect, greeting, timeout, then echoes with ``--gc-think-time`` between them; ``:q`` on stop.
- ``IdleUser``: holds its connection and speaks once just before its idle timeout (how many clients are kept).
- ``ChurnUser``: connect, greeting, one echo, ``:q``, repeat (connection setup and teardown rate).
- ``TimeoutUser``: negotiates ``--gc-short-timeout``, goes silent, expects ``bye: idle timeout`` on time.
- ``RoomUser``: joins a room of ``--gc-room-size`` members and talks there (under ``--gc-room-rate``); every other
  member records the room line as step ``fanout`` (µs from send to receipt); the summary says delivered vs expected.

Statistics rows have the scenario as request type and the step as name (``connect``, ``greeting``, ``timeout``,
``echo``, ``idle``, ``quit``, ``bye``, ``join``, ``fanout``); failures are named by cause. At the end a µs latency
table (HdrHistogram) is printed and, with ``--csv PREFIX`` or ``--gc-latency-file``, written as CSV and JSON;
``--gc-hlog PATH`` writes the histograms as an HdrHistogram log. ``docs/loadtest.md`` has the details.

It is part of the installed package, so a wheel install (``pip install 'geventchat[loadtest]'``) can load test;
the repository's ``loadtest/locustfile.py`` imports these names for ``locust -f``. Importing it imports Locust.
"""

from __future__ import annotations

from geventchat.loadtest.users import ChatUser, ChurnUser, IdleUser, RoomUser, TimeoutUser

__all__ = ["ChatUser", "ChurnUser", "IdleUser", "RoomUser", "TimeoutUser"]
