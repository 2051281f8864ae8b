"""The client wrapper of the Locust users, in Locust's custom-client idiom (the users are in :mod:`.users`).

- :class:`ChatSession` drives :class:`~geventchat.client.ChatClient` one step at a time (``connect``,
  ``greeting``, ``timeout``, ``echo``, ``quit``, ...), times each step, records it in the µs histogram and fires
  Locust's ``request`` event (request type = the scenario, name = the step, so ChatUser's and ChurnUser's
  ``connect`` rows stay apart in Locust's tables, charts, CSV and report). A failure is reported under its cause
  (:func:`~geventchat.loadtest.failures.cause_of`), then the connection is dropped; the next step reconnects.
- :class:`RunContext` is what one test run shares per process: the settings, the target addresses, the latency
  recorder and the reply :class:`Watchdog`. :func:`start_run` builds it at ``test_start``.

It imports gevent but not Locust: the session only needs the ``environment`` it is given (its ``events.request``
to fire and its ``parsed_options`` to read), and gevent's cooperative sockets work without monkey-patching.
"""

from __future__ import annotations

import itertools
import logging
import ssl
import time
import weakref
from typing import Any

import gevent

from geventchat._gevent_fast import RepeatingTimer, throw
from geventchat.client import ChatClient, ChatClientError, ClosedByServer, ReplyTimeout
from geventchat.config import Framing
from geventchat.protocol import ClientConversation, Greeting, Reply
from geventchat.tls import client_context

from .failures import BYE_TOO_EARLY, BYE_TOO_LATE, CLOSED_WITHOUT_BYE, StepFailed, cause_of
from .latency import LatencyRecorder
from .report import recorder_of
from .settings import BadSettings, Settings
from .target import Target, parse_targets

__all__ = [
    "ChatSession",
    "ReplyExpired",
    "RunContext",
    "Watchdog",
    "run_context",
    "start_run",
]

log = logging.getLogger("loadtest")

#: How early (s) a ``bye:`` may come before the negotiated timeout, measured from when our last message was sent
#: (the server's deadline cannot start earlier), and still count: clock granularity only.
_EARLY_SLACK = 0.001
#: Distinct messages a session cycles through.
_MESSAGE_RING = 64
# Shared, never mutated: Locust's request event wants a context dict.
_NO_CONTEXT: dict[str, Any] = {}


# --------------------------------------------------------------------------------------------------- per run


class ReplyExpired(Exception):
    """Thrown by the :class:`Watchdog` into a session whose echo outlived ``--gc-reply-timeout``."""


class Watchdog:
    """Enforces the echo reply timeout for every session of a process with one repeating timer.

    A ``gevent.Timeout`` started and cancelled around every echo cost about as much as checking the reply. Instead a
    session writes its deadline into :attr:`ChatSession.deadline` before it sends and clears it when the reply is
    in; every ``interval`` seconds this timer, running in the hub, throws :class:`ReplyExpired` into each session
    whose deadline has passed. A session with a deadline set is always blocked inside its send or receive (it sets
    and clears it around those calls only), so that is where the exception lands. Precision: ``interval``.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.sessions: weakref.WeakSet[ChatSession] = weakref.WeakSet()
        self._timer = RepeatingTimer(interval, self._check)

    def _check(self) -> None:
        now = time.perf_counter()
        for session in list(self.sessions):
            deadline = session.deadline
            if deadline and now >= deadline and session.greenlet is not None:
                session.deadline = 0.0
                session.expired.__traceback__ = None
                throw(session.greenlet, session.expired)

    def close(self) -> None:
        self._timer.close()


class RunContext:
    """What the users of one test run share in one process. Built by :func:`start_run` at ``test_start``."""

    def __init__(self, settings: Settings, targets: tuple[Target, ...], recorder: LatencyRecorder) -> None:
        self.settings = settings
        self.targets = targets
        self.recorder = recorder
        self.watchdog = Watchdog(min(0.25, settings.reply_timeout / 4))
        self._targets = itertools.cycle(targets)
        self._sources = itertools.cycle(settings.source_addresses) if settings.source_addresses else None
        # The messages users send, built once per run and shared by every session: (message, the bytes that send
        # it, the bytes of its exact echo). Each starts with a two-digit sequence number cycling through
        # _MESSAGE_RING values, so an echo of an earlier message does not pass for this one's. Formatting a fresh
        # message per request cost more than checking its echo; a ring per session cost ~20 KB per user.
        size = settings.message_size
        prefix = settings.prefix.encode()
        encoder = ClientConversation(settings.prefix)
        self.ring: list[tuple[str, bytes, bytes]] = []
        for n in range(_MESSAGE_RING):
            message = (f"{n:02x}." + "m" * size)[:size]
            line = encoder.send_message(message)
            self.ring.append((message, line, prefix + line))
        self.reply_length = len(prefix) + size + 1
        #: One TLS context per run, shared by every connection (building one per connection is costly).
        self.tls = _tls_context(settings) if settings.tls else None
        #: Set when the test is stopping (Locust's ``test_stopping``): RoomUsers stop sending, so what they sent
        #: can still reach the other members before those leave.
        self.stopping = False
        #: RoomUsers started in this process so far: the next one's place in the rooms.
        self.room_users = itertools.count()

    def close(self) -> None:
        """Stop this run's watchdog (a new run builds its own)."""
        self.watchdog.close()

    def next_endpoints(self) -> tuple[Target, tuple[str, int] | None]:
        """The next (destination, source address) pair, round robin over ``--host`` and
        ``--gc-source-addresses``."""
        source = (next(self._sources), 0) if self._sources is not None else None
        return next(self._targets), source


def _tls_context(settings: Settings) -> ssl.SSLContext:
    try:
        return client_context(settings.tls_ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise BadSettings(f"--gc-tls-ca {settings.tls_ca!r}: {exc.strerror or exc}") from None


def start_run(environment: Any) -> RunContext:
    """Parse the host and the ``--gc-*`` options for a new test run and attach the result to the environment.

    Raises :class:`~geventchat.loadtest.target.BadTarget` or :class:`~geventchat.loadtest.settings.BadSettings`.
    """
    previous: RunContext | None = getattr(environment, "geventchat_run", None)
    if previous is not None:
        previous.close()
    environment.geventchat_run = None
    settings = Settings.from_options(environment.parsed_options)
    host = environment.host or next((u.host for u in environment.user_classes if u.host), None)
    context = RunContext(settings, parse_targets(host), recorder_of(environment))
    environment.geventchat_run = context
    return context


def run_context(environment: Any) -> RunContext:
    """The current run's context (built now if ``test_start`` did not, e.g. a hand-made Environment)."""
    context: RunContext | None = getattr(environment, "geventchat_run", None)
    return context if context is not None else start_run(environment)


# --------------------------------------------------------------------------------------------------- the client


class ChatSession:
    """One user's connection, driven step by step. Every step method returns ``True`` on success; on failure it
    has reported the cause to Locust, closed the connection and returns ``False``."""

    def __init__(self, environment: Any, scenario: str, context: RunContext) -> None:
        self.scenario = scenario
        self.settings = context.settings
        self.context = context
        self.client: ChatClient | None = None
        #: Set while a step runs: a user stopped mid-step must not try to quit politely.
        self.busy = False
        self._fire = environment.events.request.fire
        self._recorder = context.recorder
        self._counters: dict[str, Any] = {}
        self._sequence = 0
        #: ``perf_counter()`` when the last echo was sent.
        self.last_sent = 0.0
        #: The message whose echo is awaited, while an echo step runs.
        self.in_flight: str | None = None
        #: Reply deadline of the echo in flight (``perf_counter()`` time), 0 when none: see :class:`Watchdog`.
        self.deadline = 0.0
        #: The greenlet running the echo in flight, for the watchdog.
        self.greenlet: Any = None
        self.expired = ReplyExpired(f"no reply within {context.settings.reply_timeout:g}s")
        # The fast path is exact: off for the rest of a connection once the protocol had to step in.
        self._fast = False
        context.watchdog.sessions.add(self)

    @property
    def connected(self) -> bool:
        return self.client is not None

    # -- reporting

    def _succeeded(self, step: str, started: float, length: int = 0) -> None:
        self._record(step, int((time.perf_counter() - started) * 1_000_000 + 0.5), length)

    def _record(self, step: str, micros: int, length: int = 0) -> None:
        """A successful ``step`` of ``micros`` µs: into the µs histogram and Locust's request event."""
        counts = self._counters.get(step)
        if counts is None:
            counts = self._counters[step] = self._recorder.counter(self.scenario, step)
        counts[micros] += 1
        self._fire(
            request_type=self.scenario,
            name=step,
            response_time=micros / 1000,
            response_length=length,
            exception=None,
            context=_NO_CONTEXT,
        )

    def _failed(self, step: str, started: float, cause: str, detail: str = "") -> bool:
        elapsed = time.perf_counter() - started
        self._recorder.record_failure(self.scenario, step)
        self._fire(
            request_type=self.scenario,
            name=step,
            response_time=elapsed * 1000,
            response_length=0,
            exception=StepFailed(cause, detail),
            context=_NO_CONTEXT,
        )
        log.debug("%s %s failed: %s (%s)", self.scenario, step, cause, detail)
        self.close()
        return False

    def _error(self, step: str, started: float, error: ChatClientError) -> bool:
        return self._failed(step, started, cause_of(error), str(error))

    # -- steps

    def connect(self, idle_timeout: float | None) -> bool:
        """Steps ``connect`` (TCP handshake), ``greeting`` (until the greeting is read) and, if ``idle_timeout`` is
        given, ``timeout`` (sending it; the server answers only if it is invalid). After a failure it pauses
        ``--gc-reconnect-delay`` seconds, so a dead or full server does not turn the users into a busy loop."""
        if self._connect(idle_timeout):
            return True
        if self.settings.reconnect_delay:
            gevent.sleep(self.settings.reconnect_delay)
        return False

    def _connect(self, idle_timeout: float | None) -> bool:
        self.close()
        settings = self.settings
        target, source = self.context.next_endpoints()
        self.busy = True
        started = time.perf_counter()
        try:
            sock = ChatClient.open_socket(
                target.host,
                target.port,
                connect_timeout=settings.connect_timeout,
                source_address=source,
                tls=self.context.tls,
            )
        except ChatClientError as exc:
            return self._error("connect", started, exc)
        self._succeeded("connect", started)
        conversation = ClientConversation(settings.prefix)
        client = self.client = ChatClient(sock, conversation, reply_timeout=settings.reply_timeout)
        started = time.perf_counter()
        try:
            greeting = client.read_greeting(timeout=settings.connect_timeout)
        except ChatClientError as exc:
            return self._error("greeting", started, exc)
        self._succeeded("greeting", started, len(greeting))
        if idle_timeout is not None:
            started = time.perf_counter()
            try:
                client.request_timeout(idle_timeout)
            except ChatClientError as exc:
                return self._error("timeout", started, exc)
            self._succeeded("timeout", started)
        self._fast = client.conversation.framing is Framing.LINE and not client.has_unread
        self.busy = False
        return True

    def echo(self, step: str = "echo") -> bool:
        """Send one message and check its echo byte for byte (step ``echo``, or ``idle`` for IdleUser).

        Fast path: send the message's bytes, read once, compare with the exact bytes of its echo. Anything else
        (a reply split over reads, a notice, a close, a wrong echo) goes to the client, whose protocol core judges
        it; that connection then uses :meth:`ChatClient.request` until it is replaced.
        """
        client = self.client
        if client is None:
            raise RuntimeError("echo() before connect()")
        self._sequence += 1
        message, line, expected = self.context.ring[self._sequence % _MESSAGE_RING]
        self.busy = True
        self.in_flight = message
        started = self.last_sent = time.perf_counter()
        try:
            if self._fast:
                sock = client.sock
                if self.greenlet is None:
                    self.greenlet = gevent.getcurrent()  # a user's greenlet runs all its tasks
                self.deadline = started + self.settings.reply_timeout
                try:
                    # send(), not sendall(): gevent's sendall() asks the kernel for the buffer size on every call;
                    # a short line goes out whole, and if not the rest follows.
                    sent = sock.send(line)
                    if sent < len(line):
                        sock.sendall(line[sent:])
                    data = sock.recv(65536)
                finally:
                    self.deadline = 0.0
                if data != expected:
                    self._fast = False
                    client.feed(data)
                    client.expect_reply(message)
            else:
                client.request(message)
        except ChatClientError as exc:
            return self._error(step, started, exc)
        except ReplyExpired:
            return self._failed(step, started, "reply timeout", str(self.expired))
        except OSError as exc:
            return self._broken(step, started, client, exc)
        self._succeeded(step, started, self.context.reply_length)
        self.busy = False
        self.in_flight = None
        return True

    def settle(self) -> bool:
        """For a user stopped while waiting for an echo: read that echo (not reported), so the connection can still
        end politely. ``True`` if the connection is back in step."""
        client, message = self.client, self.in_flight
        if client is None or message is None:
            return False
        try:
            client.expect_reply(message)
        except ChatClientError:
            self.close()
            return False
        self.in_flight = None
        self.busy = False
        return True

    def _broken(self, step: str, started: float, client: ChatClient, error: OSError) -> bool:
        """The fast path's send or receive failed: report the server's ``bye:`` if it sent one before closing,
        else a reset."""
        try:
            client.receive(timeout=0.05)
        except ClosedByServer as closed:
            if closed.reason is not None:
                return self._error(step, started, closed)
        except ChatClientError:
            pass
        return self._failed(step, started, "reset by peer", error.strerror or str(error))

    def quit(self) -> bool:
        """Step ``quit``: ``:q``, its echo, and the server's close. The connection is closed after."""
        client = self.client
        if client is None:
            return False
        self.busy = True
        started = time.perf_counter()
        try:
            client.quit(wait_for_close=True)
        except ChatClientError as exc:
            return self._error("quit", started, exc)
        self.client = None
        self._succeeded("quit", started)
        self.busy = False
        return True

    def await_idle_bye(self, timeout: float, tolerance: float) -> bool:
        """Step ``bye`` (TimeoutUser): stay silent and expect ``bye: idle timeout`` between ``timeout`` and
        ``timeout + tolerance`` seconds after the last message was sent (the server's deadline cannot start
        earlier). Its response time is how late the bye came after that deadline (at most a round trip more than
        the server's own lateness). Closes the connection.
        """
        client = self.client
        if client is None:
            raise RuntimeError("await_idle_bye() before connect()")
        self.busy = True
        started = self.last_sent
        try:
            event = client.receive(timeout=max(started + timeout + tolerance - time.perf_counter(), 0.0))
        except ReplyTimeout:
            return self._failed("bye", started, BYE_TOO_LATE, f"no bye within {timeout + tolerance:g}s")
        except ClosedByServer as closed:
            elapsed = time.perf_counter() - started
            if closed.reason is None:
                return self._failed("bye", started, CLOSED_WITHOUT_BYE)
            if not closed.reason.startswith("idle timeout"):
                return self._failed("bye", started, cause_of(closed))
            if elapsed < timeout - _EARLY_SLACK:
                return self._failed("bye", started, BYE_TOO_EARLY, f"bye after {elapsed:.4f}s of {timeout:g}s")
            self._succeeded("bye", min(started + timeout, time.perf_counter()))
            self.close()
            return True
        except ChatClientError as exc:
            return self._error("bye", started, exc)
        kind = "reply" if isinstance(event, Reply) else "greeting" if isinstance(event, Greeting) else "notice"
        return self._failed("bye", started, "wrong reply", f"expected a bye, got a {kind}")

    def close(self) -> None:
        """Drop the connection without a goodbye (idempotent)."""
        client, self.client = self.client, None
        self.busy = False
        self.in_flight = None
        self._fast = False
        if client is not None:
            client.close()
