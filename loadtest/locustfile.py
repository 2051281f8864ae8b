"""Load-test a geventchat server (or anything speaking its protocol) with Locust, from a clone of the repository.

    locust -f loadtest/locustfile.py --headless -u 100 -r 50 -t 30s --host tcp://127.0.0.1:8888 ChatUser

The same as ``geventchat loadtest ...``, which runs Locust with the packaged locustfile
(``geventchat/loadtest/locustfile.py``, whose docstring lists the scenarios): this file only names its users, and
Locust runs every User class named in a locustfile. ``README.md`` ("Load testing with Locust") and
``docs/loadtest.md`` have the details.
"""

from __future__ import annotations

from geventchat.loadtest.locustfile import ChatUser, ChurnUser, IdleUser, RoomUser, TimeoutUser

__all__ = ["ChatUser", "ChurnUser", "IdleUser", "RoomUser", "TimeoutUser"]
