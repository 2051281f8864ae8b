"""One connection's chat side: :class:`ChatMember` answers its commands, fans its lines out through the room
service, and writes what other members send it, from its outbox, in a writer greenlet of its own.

Made lazily, on the first line that concerns chat (a command): a client that never uses chat costs nothing here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import gevent
import gevent.lock
from gevent import Greenlet

from ..chat.outbox import Outbox
from ..chat.rooms import RoomService, answer
from ..protocol.chat import TOO_FAST, Join, Leave, PrivateMessage, RateLimiter, parse_command
from ..protocol.text import NEWLINE

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["ChatMember"]


class ChatMember:
    """A connection as a room member (:class:`~geventchat.chat.rooms.Member`). Compared and hashed by identity.

    Writes: the connection's own (echo replies, answers) and the writer's (lines from other members) both hold
    :attr:`write_lock`, so they never interleave in the middle of a line; the writer writes whole lines only.
    """

    __slots__ = (
        "_closing",
        "_cut_at",
        "_limiter",
        "_pending",
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
        """Queue ``line``; never blocks. Overflow: the member is parted at once (``too slow``) and closed."""
        outbox = self.outbox
        if outbox.overflowed or self._closing:
            return  # going: nothing may follow its 'bye:' (or its ':q' reply), and no second writer may start
        if not outbox.put(line):
            self.connection.server.stats.chat_overflows += 1
            self.service.part(self, "too slow")
            self.connection.request_too_slow()
            return
        self.connection.server.stats.deliveries += 1
        if self._writer is None:
            self._writer = gevent.spawn(self._write_queued)

    def _write_queued(self) -> None:
        sock_send = self.connection.sock.send
        stats = self.connection.server.stats
        try:
            while True:  # bounded: ends when the outbox is empty (each round takes everything queued)
                data = self.outbox.take()
                if not data:
                    return
                with self.write_lock:
                    self._pending = data
                    self._cut_at = 0
                    while self._cut_at < len(data):  # bounded: a member that never reads overflows and is killed
                        self._cut_at += sock_send(memoryview(data)[self._cut_at :])
                    self._pending = b""
                stats.bytes_out += len(data)
        except OSError:
            return  # the connection broke: its own greenlet sees it on its next read or write
        finally:
            self._writer = None

    # -- called by the connection as it closes

    def stop_writing(self) -> bytes:
        """Stop the writer. Returns the rest of the line it was in the middle of (``b""`` if none), which must go
        out before any other line. Deliveries from then on are dropped (the member is parted right after)."""
        self._closing = True
        writer = self._writer
        if writer is not None:
            writer.kill()
        data, cut_at = self._pending, self._cut_at
        self._pending = b""
        if not data or cut_at == 0 or data[cut_at - 1 : cut_at] == NEWLINE:
            return b""
        end = data.index(NEWLINE, cut_at)
        return data[cut_at : end + 1]

    def part(self, reason: str) -> None:
        """The member went: the room hears ``info: NICK left #ROOM (REASON)`` (no-op if already parted)."""
        self.service.part(self, reason)
