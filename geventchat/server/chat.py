"""One connection's chat side: :class:`ChatMember` answers its commands, fans its lines out through the room
service, and writes what other members send it: straight from the sender's greenlet when the socket takes the line
at once, else from its outbox, in a writer greenlet of its own.

Made lazily, on the first line that concerns chat (a command): a client that never uses chat costs nothing here.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.lock
from gevent import Greenlet

from .._gevent_fast import call_soon, plain_socket
from ..chat.outbox import Outbox
from ..chat.rooms import RoomService, answer
from ..protocol.chat import TOO_FAST, Join, Leave, PrivateMessage, RateLimiter, parse_command
from ..protocol.text import NEWLINE

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["ChatMember"]


class _TurnFlush:
    """The members sent lines during this turn of the hub, each flushed once (:meth:`ChatMember._flush`) by one
    loop callback at the hub's next turn: by then every greenlet that delivered has switched away, so a member
    gets in one ``send`` all the lines a sender's chunk fanned out to it. One list append per delivery, where a
    loop callback per member and turn cost about 1 us more per delivery (measured under gevent 26)."""

    __slots__ = ("_due", "_members")

    def __init__(self) -> None:
        self._members: list[ChatMember] = []
        self._due = False

    def add(self, member: ChatMember) -> None:
        self._members.append(member)
        if not self._due:
            self._due = True
            call_soon(self._run)

    def _run(self) -> None:
        members, self._members = self._members, []
        self._due = False
        for index, member in enumerate(members):  # bounded: the members added before this turn
            try:
                member._flush()
            except Exception:
                # A bug of ours (the hub logs it): the members after this one must not wait for a next delivery.
                for rest in members[index + 1 :]:
                    self.add(rest)
                raise


# A turn is its hub's: one _TurnFlush per hub (gevent runs one per thread), made on first use. Keyed by the hub
# itself, not a threading.local: in a monkey-patched process (a server embedded in a Locust run) threading.local
# is gevent's, one per greenlet, and every member would get a flush of its own.
_turn_flushes: weakref.WeakKeyDictionary[Any, _TurnFlush] = weakref.WeakKeyDictionary()


def _turn_flush() -> _TurnFlush:
    hub = gevent.get_hub()
    flush = _turn_flushes.get(hub)
    if flush is None:
        flush = _turn_flushes[hub] = _TurnFlush()
    return flush


class ChatMember:
    """A connection as a room member (:class:`~geventchat.chat.rooms.Member`). Compared and hashed by identity.

    Writes: the connection's own (echo replies, answers) and the writer's (lines from other members) both hold
    :attr:`write_lock`, so they never interleave in the middle of a line; the writer writes whole lines only. On
    plain TCP most lines need no writer: what a member was sent during one turn of the hub goes out in one
    non-blocking ``send`` from the hub (:meth:`_flush`); only what the socket does not take, or what arrives while the
    connection is writing its own reply, goes through the writer greenlet, which finishes a cut write first.
    """

    __slots__ = (
        "_closing",
        "_cut_at",
        "_flush_due",
        "_limiter",
        "_lock_handed",
        "_pending",
        "_send_now",
        "_stats",
        "_turn",
        "_writer",
        "connection",
        "outbox",
        "service",
        "write_lock",
    )

    def __init__(self, connection: Connection, service: RoomService) -> None:
        self.connection = connection
        self.service = service
        chat = connection.server.config.chat
        self.outbox = Outbox(chat.send_queue)
        self.write_lock = gevent.lock.Semaphore()
        self._limiter = RateLimiter(chat.room_rate)
        self._writer: Greenlet | None = None
        self._pending = b""  # what the writer is sending now
        self._cut_at = 0  # how much of it went out
        self._closing = False  # set by stop_writing(): the connection's last lines are its own
        self._flush_due = False  # in the hub's _TurnFlush, not flushed yet
        self._lock_handed = False  # write_lock taken by _flush() for a writer not started yet
        self._stats = connection.server.stats
        self._turn = _turn_flush()
        # Sends what it can now or raises BlockingIOError: the stdlib socket inside gevent's (non-blocking at the
        # OS level), without gevent's Python wrapper, as the connection's plain loop sends. TLS: None, every line
        # goes through the writer greenlet (an SSL socket may need to read to write, and a record cut by EAGAIN
        # must be retried with the same bytes: not for the hub). Made on the first command, so after the TLS
        # handshake.
        self._send_now: Callable[[bytes], int] | None = (
            plain_socket(connection.sock).send if connection.server.tls is None else None
        )
        service.connect(self)

    # -- called by the conversation (in the connection's greenlet)

    def on_message(self, message: bytes) -> bytes | None:
        """See :class:`~geventchat.protocol.server_side.ChatHook`."""
        text = message.decode()
        command = parse_command(text) if text[:1] == ":" else None
        service = self.service
        if command is None:
            if not self.connection.in_room:
                return None  # ':)' outside a room: the echo alone
            if not self._limiter.allow(time.monotonic()):
                return TOO_FAST
            return service.say(self, text)
        if isinstance(command, PrivateMessage) and not self._limiter.allow(time.monotonic()):
            return TOO_FAST
        line = answer(service, self, command)
        if isinstance(command, Join) and line.startswith(b"ok:"):
            self.connection.in_room = True
        elif isinstance(command, Leave):
            self.connection.in_room = False
        return line

    # -- called by the room service (in the sender's greenlet)

    def deliver(self, line: bytes) -> None:
        """Queue ``line`` to go out at the hub's next turn (:meth:`_flush`); never blocks. Overflow: the member is
        parted at once (``too slow``) and closed."""
        outbox = self.outbox
        if outbox.overflowed or self._closing:
            return  # going: nothing may follow its 'bye:' (or its ':q' reply), and no second writer may start
        if not outbox.put(line):
            self._stats.chat_overflows += 1
            self.service.part(self, "too slow")
            self.connection.request_too_slow()
            return
        self._stats.deliveries += 1
        if self._writer is not None or self._flush_due:
            return  # the writer, or the flush already asked for, takes this line with the others
        if self._send_now is None:  # TLS
            self._writer = gevent.spawn(self._write_queued)
        else:
            self._flush_due = True
            self._turn.add(self)

    def _flush(self) -> None:
        """In the hub, after the greenlets that delivered this turn switched away: one non-blocking ``send`` of all
        that was queued meanwhile (every line the sender's chunk fanned out to this member). What the socket does not
        take goes to a writer, which sends it before any other byte on this socket.

        Why not a writer greenlet per batch, as before: spawned for a member whose queue was empty, each got a fresh
        frame stack, faulted in, and died with the queue (73 us per delivery with one message in flight per room,
        docs/performance.md). Why not a ``send`` straight from :meth:`deliver`, as asyncio's ``transport.write``:
        a sender whose chunk holds several lines then makes one system call per line and member, where this makes
        one per member."""
        self._flush_due = False
        if self._closing or self._writer is not None:
            return  # closing: dropped, as the writer's lines are; a writer (not started here) takes them
        lock = self.write_lock
        if lock.locked():  # the connection is in the middle of its own reply: the writer waits for it
            self._writer = gevent.spawn(self._write_queued)
            return
        data = self.outbox.take()
        if not data:
            return  # overflowed since (the queue was dropped)
        send_now = self._send_now
        assert send_now is not None  # scheduled for plain TCP only
        try:
            sent = send_now(data)
        except BlockingIOError:
            sent = 0  # the socket buffer is full
        except OSError:
            return  # the connection broke: its own greenlet sees it on its next read or write
        if sent == len(data):
            self._stats.bytes_out += sent
            return
        # The rest must go before any other byte on this socket (the connection's own replies included): the lock
        # is taken now, for the writer, which finishes these lines first. It is free (checked above; the hub does
        # not switch in between), so this never waits.
        lock.acquire()
        self._pending = data
        self._cut_at = sent
        self._lock_handed = True
        self._writer = gevent.spawn(self._write_queued)

    def _write_queued(self) -> None:
        """The writer: finishes what :meth:`_flush` sent in part (if it did: the lock is then already held for
        it), then writes what is queued, whole lines under :attr:`write_lock`, until the outbox is empty."""
        sock_send = self.connection.sock.send
        lock = self.write_lock
        try:
            if self._lock_handed:
                self._lock_handed = False
                try:
                    self._send_pending(sock_send)
                finally:
                    lock.release()
            while True:  # bounded: ends when the outbox is empty (each round takes everything queued)
                with lock:
                    # Taken under the lock: the connection may have written its ':q' reply (or bye) meanwhile and
                    # begun closing, and nothing may follow that.
                    if self._closing:
                        return
                    data = self.outbox.take()
                    if not data:
                        return
                    self._pending = data
                    self._cut_at = 0
                    self._send_pending(sock_send)
        except OSError:
            return  # the connection broke: its own greenlet sees it on its next read or write
        finally:
            self._writer = None

    def _send_pending(self, sock_send: Callable[[memoryview], int]) -> None:
        """Send the rest of :attr:`_pending` (blocking this greenlet, under the write lock); count it once all out."""
        data = self._pending
        while self._cut_at < len(data):  # bounded: a member that never reads overflows and is killed
            self._cut_at += sock_send(memoryview(data)[self._cut_at :])
        self._pending = b""
        self._stats.bytes_out += len(data)

    # -- called by the connection as it closes

    def stop_writing(self) -> bytes:
        """Stop the writer. Returns the rest of the line it was in the middle of (``b""`` if none), which must go
        out before any other line. Deliveries from then on are dropped (the member is parted right after)."""
        self._closing = True
        writer = self._writer
        if writer is not None:
            writer.kill()
        if self._lock_handed:  # killed before it started: the lock deliver() took for it was never its to release
            self._lock_handed = False
            self.write_lock.release()
        data, cut_at = self._pending, self._cut_at
        self._pending = b""
        if not data or cut_at == 0 or data[cut_at - 1 : cut_at] == NEWLINE:
            return b""
        end = data.index(NEWLINE, cut_at)
        return data[cut_at : end + 1]

    def part(self, reason: str) -> None:
        """The member went: the room hears ``info: NICK left #ROOM (REASON)`` (no-op if already parted)."""
        self.service.part(self, reason)
