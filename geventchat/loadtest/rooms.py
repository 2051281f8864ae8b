"""RoomUser's session: join a room, send stamped messages, and time the room lines the other members receive.

Every message a RoomUser sends is ``m SENDER SEQ T_NS``: who sent it, its number, and ``time.time_ns()`` when it
was sent. ``time.time_ns()`` (the wall clock), not ``perf_counter_ns()``: the sender and the receiver may be
different Locust worker processes, and only the wall clock is shared by the processes of one host. So ``fanout``
latencies are only meaningful when every worker runs on the same machine.

A room line arrives whenever another member speaks, not in answer to anything, so a reader greenlet per session
reads every line: the sender's own echo replies (and ``ok:``/``error:`` lines) go to the sender through a queue,
room lines are recorded as step ``fanout``, ``info:`` lines keep the member count up to date.

Delivered vs expected (:class:`FanoutTally`): a sender counts ``members - 1`` expected deliveries for each message
as it sends it, with the member count it knows then (the ``ok: joined`` count, plus and minus the ``info:``
joins and leaves since); a receiver counts each room line it reads. Both are exact while membership is stable,
which is why a sender waits (up to ``--gc-reply-timeout``) for its room to fill before it starts, and stops sending
when the test is stopping, before the users leave.

A message the server refuses to relay (``error: too fast, not delivered`` and any other ``error:`` line, which
comes right after the message's echo) is counted apart: the reader takes the ``error:`` that follows an echo as
that message's, takes its deliveries back out of ``expected``, counts it in ``refused``, and reports a failure of
the step ``refused`` with the server's reason as the cause (the connection goes on). The ``echo`` step itself
succeeded: its echo came back. The next step reads its own echo, never that ``error:`` line.
"""

from __future__ import annotations

import re
import time
from typing import Any

import gevent
from gevent.queue import Empty, Queue

from geventchat.client import ChatClient, ChatClientError, ClosedByServer, ReplyTimeout
from geventchat.protocol import ErrorNotice, Reply

from .failures import StepFailed
from .session import ChatSession, RunContext

__all__ = ["FanoutTally", "RoomSession", "fanout_of", "format_fanout", "room_name"]

#: ``ok: joined #ROOM (N members)``
_JOINED = re.compile(r"ok: joined #(\S+) \((\d+) members?\)")
#: ``#ROOM NICK: m SENDER SEQ T_NS``; other room lines (not ours) are counted as nothing.
_ROOM_LINE = re.compile(r"#(\S+) \S+: m (\S+) (\d+) (\d+)$")
_INFO_JOINED = re.compile(r"info: \S+ joined #(\S+)$")
_INFO_LEFT = re.compile(r"info: \S+ left #(\S+)(?: \(.*\))?$")


class FanoutTally:
    """Messages sent (``refused`` of them refused by the server, not relayed), deliveries expected and deliveries
    received, in one process; workers ship their counts to the master with :meth:`take_report` (deltas) and the
    master adds them up with :meth:`add_report`."""

    def __init__(self) -> None:
        self.sent = 0
        self.refused = 0
        self.expected = 0
        self.delivered = 0

    def take_report(self) -> dict[str, int]:
        report = {"sent": self.sent, "refused": self.refused, "expected": self.expected, "delivered": self.delivered}
        self.reset()
        return report

    def add_report(self, report: dict[str, int]) -> None:
        self.sent += int(report.get("sent", 0))
        self.refused += int(report.get("refused", 0))
        self.expected += int(report.get("expected", 0))
        self.delivered += int(report.get("delivered", 0))

    def reset(self) -> None:
        self.sent = self.refused = self.expected = self.delivered = 0

    def as_dict(self) -> dict[str, Any]:
        loss = self.expected - self.delivered
        return {
            "sent": self.sent,
            "refused": self.refused,
            "expected": self.expected,
            "delivered": self.delivered,
            "loss": loss,
            "loss_ratio": loss / self.expected if self.expected else 0.0,
        }


def fanout_of(environment: Any) -> FanoutTally:
    """The environment's fan-out tally (created on first use; one per process)."""
    tally: FanoutTally | None = getattr(environment, "geventchat_fanout", None)
    if tally is None:
        tally = FanoutTally()
        environment.geventchat_fanout = tally
    return tally


def format_fanout(tally: FanoutTally) -> str:
    """``RoomUser fan-out: delivered D of E expected (S messages), loss L (x.xx%); R refused by the server``."""
    figures = tally.as_dict()
    return (
        f"RoomUser fan-out: delivered {figures['delivered']} of {figures['expected']} expected "
        f"({figures['sent']} messages), loss {figures['loss']} ({figures['loss_ratio']:.2%}); "
        f"{figures['refused']} refused by the server (not expected)"
    )


def room_name(worker_index: int, user_number: int, room_size: int) -> str:
    """The room of this process's ``user_number``-th RoomUser (from 0): rooms are filled in order,
    ``lt<WORKER>-<K>``. Locust numbers its workers but not users across workers, so each worker fills rooms of
    its own."""
    return f"lt{worker_index}-{user_number // room_size + 1}"


class RoomSession(ChatSession):
    """A :class:`ChatSession` in a room: :meth:`join`, then :meth:`say` in turn; :meth:`leave` at the end."""

    def __init__(self, environment: Any, scenario: str, context: RunContext, ident: str) -> None:
        super().__init__(environment, scenario, context)
        self.ident = ident
        self.room = ""
        self.members = 0
        self.tally = fanout_of(environment)
        self._replies: Queue[Any] = Queue()
        self._reader: gevent.Greenlet[Any, None] | None = None
        self._joined_at = 0.0
        # Expected deliveries counted per message until its echo comes back (one in flight; say() waits for it).
        self._counted: dict[str, int] = {}
        # Those of the message whose echo was the last event read, for the 'error:' that may come right after it
        # (the server writes an echo and its refusal together); any other event ends that chance.
        self._after_echo: int | None = None

    @property
    def room_full(self) -> bool:
        return self.members >= self.settings.room_size

    def join(self, room: str) -> bool:
        """Step ``join``: ``:join ROOM``, its echo and ``ok: joined #ROOM (N members)``; then start reading."""
        client = self.client
        if client is None:
            raise RuntimeError("join() before connect()")
        self.busy = True
        started = time.perf_counter()
        command = f":join {room}"
        try:
            client.request(command)
            event = client.receive()
        except ChatClientError as exc:
            return self._error("join", started, exc)
        match = _JOINED.fullmatch(event.text) if isinstance(event, Reply) else None
        if match is None:
            return self._failed("join", started, "wrong reply", f"expected ok: joined, got {event!r}")
        self.room, self.members = match.group(1), int(match.group(2))
        self._succeeded("join", started)
        self._joined_at = time.perf_counter()
        self._reader = gevent.spawn(self._read, client)
        self.busy = False
        return True

    def may_speak(self) -> bool:
        """True once the room is full, or ``--gc-reply-timeout`` after joining a room that did not fill."""
        return self.room_full or time.perf_counter() - self._joined_at >= self.settings.reply_timeout

    def say(self) -> bool:
        """Step ``echo``: send ``m SENDER SEQ T_NS`` into the room and wait for its echo (read by the reader)."""
        client = self.client
        if client is None:
            raise RuntimeError("say() before join()")
        self._sequence += 1
        message = f"m {self.ident} {self._sequence} {time.time_ns()}"
        self.busy = True
        started = self.last_sent = time.perf_counter()
        # Counted before it goes: a user stopped while waiting for this echo has still sent a message the others
        # will receive (and count) before they leave.
        self.tally.sent += 1
        self._counted[message] = max(self.members - 1, 0)
        self.tally.expected += self._counted[message]
        try:
            client.send(message)
            reply = self._replies.get(timeout=self.settings.reply_timeout)
        except ChatClientError as exc:
            return self._error("echo", started, exc)
        except Empty:
            # Its echo never came: nothing may claim its count any more (a late echo then counts as nothing).
            self._counted.pop(message, None)
            return self._failed("echo", started, "reply timeout", f"no reply within {self.settings.reply_timeout:g}s")
        if isinstance(reply, ChatClientError):
            return self._error("echo", started, reply)
        if isinstance(reply, ErrorNotice):
            return self._failed("echo", started, "wrong reply", f"server answered error: {reply.reason}")
        if not isinstance(reply, Reply) or reply.message != message:
            return self._failed("echo", started, "wrong reply", f"expected the echo, got {reply!r}")
        self._succeeded("echo", started, len(reply.text))
        self.busy = False
        return True

    def _read(self, client: ChatClient) -> None:
        """Read every line of this connection until it ends (the loop ends with the connection)."""
        prefix = self.settings.prefix
        while self.client is not None and self.client is client:
            try:
                event = client.receive(timeout=self.settings.reply_timeout)
            except ReplyTimeout:
                continue  # a quiet room: nothing is wrong
            except ClosedByServer as closed:
                if closed.reason is not None and self.client is client:
                    self._replies.put(closed)
                return
            except ChatClientError as exc:
                if self.client is client:  # else: we closed it ourselves
                    self._replies.put(exc)
                return
            if isinstance(event, ErrorNotice) and self._after_echo is not None:
                self._refused(self._after_echo, event.reason)
                continue
            # Not that echo's error: an 'error:' after this event follows no echo of ours and refuses nothing.
            self._after_echo = None
            if not isinstance(event, Reply) or (prefix and event.text.startswith(prefix)):
                if isinstance(event, Reply):
                    self._after_echo = self._counted.pop(event.message, 0)
                self._replies.put(event)  # an echo reply, or an error: line that follows no echo
                continue
            text = event.text
            if text.startswith("#"):
                self._fanout(text)
            elif text.startswith("info: "):
                if (joined := _INFO_JOINED.fullmatch(text)) and joined.group(1) == self.room:
                    self.members += 1
                elif (left := _INFO_LEFT.fullmatch(text)) and left.group(1) == self.room:
                    self.members -= 1
            elif text.startswith("ok: "):
                self._replies.put(event)

    def _refused(self, counted: int, reason: str) -> None:
        """The message whose echo came last was not relayed (``reason``: the server's ``error:`` text)."""
        self._after_echo = None
        self.tally.expected -= counted
        self.tally.refused += 1
        self._recorder.record_failure(self.scenario, "refused")
        self._fire(
            request_type=self.scenario,
            name="refused",
            response_time=0,
            response_length=0,
            exception=StepFailed(reason),
            context={},
        )

    def _fanout(self, text: str) -> None:
        match = _ROOM_LINE.fullmatch(text)
        if match is None:
            return  # someone else's line in our room: not one we can time
        micros = max((time.time_ns() - int(match.group(4))) // 1000, 0)
        self.tally.delivered += 1
        self._record("fanout", micros, len(text))

    def close(self) -> None:
        """Drop the connection (idempotent); a reconnected session joins its room again."""
        reader, self._reader = self._reader, None
        super().close()
        self.room, self.members = "", 0
        self._replies = Queue()  # nothing of the old connection may answer for the new one
        self._counted.clear()
        self._after_echo = None
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)

    def leave(self) -> None:
        """End of the run: send ``:q`` and let the reader read (and count) every room line the server sent before
        it closes the connection; then close."""
        client, reader = self.client, self._reader
        if client is not None and reader is not None and not reader.dead:
            try:
                client.send_quit()
                reader.join(timeout=self.settings.reply_timeout)
            except ChatClientError:
                pass  # going anyway: the connection is closed below
        self.close()
