"""The Locust users: :class:`GeventChatUser`, the ``abstract = True`` base, and the five scenarios.

Put them in your own locustfile by importing them (Locust runs every non-abstract User class it finds there)::

    from geventchat.loadtest import ChatUser, IdleUser            # these two scenarios, as they are

    from locust import task
    from geventchat.loadtest import GeventChatUser                # or a scenario of your own

    class HelloUser(GeventChatUser):
        @task
        def hello(self) -> None:
            if self.session is not None and (self.session.connected or self.session.connect(self.settings.timeout)):
                self.session.echo()

Importing this module imports Locust, which monkey-patches the whole process, and installs the load tester's
listeners on Locust's events (:func:`~geventchat.loadtest.listeners.install`): the ``--gc-*`` options, the checks
before any user starts, the µs latency table. Locust builds its command line from those listeners after it has
imported the locustfile, so importing a user here is all a locustfile needs.
"""

from __future__ import annotations

from typing import Any

from locust import User, events, task
from locust.exception import StopUser

from .listeners import install
from .rooms import RoomSession, room_name
from .session import ChatSession, log, run_context
from .settings import BadSettings, Settings
from .target import BadTarget

__all__ = ["ChatUser", "ChurnUser", "GeventChatUser", "IdleUser", "RoomUser", "TimeoutUser"]


class GeventChatUser(User):
    """Base of the geventchat scenarios: builds a :class:`~geventchat.loadtest.session.ChatSession` on start,
    closes it on stop.

    ``--host`` is ``tcp://HOST:PORT`` or ``HOST:PORT``. Subclasses write tasks with ``self.session``.
    """

    abstract = True

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.session: ChatSession | None = None
        self.settings = Settings()

    def wait_time(self) -> float:
        """Think time between tasks (``--gc-think-time``)."""
        return self.settings.think_time

    def on_start(self) -> None:
        try:
            context = run_context(self.environment)
        except (BadTarget, BadSettings) as exc:
            log.error("%s not started: %s", type(self).__name__, exc)
            raise StopUser() from None
        self.settings = context.settings
        self.session = ChatSession(self.environment, type(self).__name__, context)

    def on_stop(self) -> None:
        session = self.session
        if session is None:
            return
        if session.busy and session.in_flight is not None:
            session.settle()  # stopped while waiting for an echo: let it arrive, then say goodbye
        if session.busy or not session.connected:
            session.close()  # stopped in the middle of connecting: nothing to be polite about
        else:
            session.quit()


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


#: Seconds between RoomUser's looks at whether its room is full yet.
_ROOM_POLL = 0.05


class RoomUser(GeventChatUser):
    """Join a room of ``--gc-room-size`` members (rooms filled in order, ``lt<WORKER>-<K>``), then send
    ``m SENDER SEQ T_NS`` with ``--gc-think-time`` between messages, checking each echo (step ``echo``). Every
    other member's reader records the room line as step ``fanout``: µs from send to receipt on the wall clock
    (meaningful only with every worker on one host). Starts sending once its room is full (or
    ``--gc-reply-timeout`` after joining), stops when the test is stopping; the summary prints delivered vs
    expected deliveries (:mod:`.rooms`)."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.room_session: RoomSession | None = None

    def wait_time(self) -> float:
        session = self.room_session
        if session is not None and session.room and not session.may_speak():
            return _ROOM_POLL  # waiting for the room to fill: not a busy loop, even with --gc-think-time 0
        # Under the server's --room-rate, whatever the think time: a line past it is refused and counted as lost.
        rate = self.settings.room_rate
        return max(self.settings.think_time, 1.0 / rate if rate > 0 else 0.0)

    def on_start(self) -> None:
        try:
            context = run_context(self.environment)
        except (BadTarget, BadSettings) as exc:
            log.error("%s not started: %s", type(self).__name__, exc)
            raise StopUser() from None
        self.settings = context.settings
        runner = self.environment.runner
        worker = int(getattr(runner, "worker_index", 0) or 0)
        number = next(context.room_users)
        session = RoomSession(self.environment, type(self).__name__, context, f"{worker}.{number}")
        self.session = self.room_session = session
        self._room = room_name(worker, number, context.settings.room_size)

    @task
    def speak(self) -> None:
        session = self.room_session
        if session is None or session.context.stopping:
            return
        connected = session.client is not None or session.connect(self.settings.timeout)
        if not connected or (session.room == "" and not session.join(self._room)):
            return
        if session.may_speak():
            session.say()

    def on_stop(self) -> None:
        if self.room_session is not None:
            self.room_session.leave()


# On import: Locust builds its command line from these listeners after it has imported the locustfile.
install(events)
