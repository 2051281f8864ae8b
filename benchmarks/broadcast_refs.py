"""Two broadcast reference servers for the fan-out benchmark, written the way people write a first chat server.

They speak the subset of geventchat's conversation the fan-out generator uses (docs/protocol.md rules 1-4, 15, 18):
greeting line → the timeout line (no reply) → ``:join ROOM`` answers the echo reply and
``ok: joined #ROOM (N members)`` and tells the others ``info: NICK joined #ROOM`` → any other line gets its echo
reply and, in a room, ``#ROOM NICK: TEXT`` to every other member → ``:q`` is echoed, then close. Nicks are
``guest-N``. No names validation, no flood control, no send queue: these are baselines, not chat servers.

- ``gevent-broadcast``: ``StreamServer``, a greenlet per client reading with ``makefile().readline`` under a
  ``gevent.Timeout``; a room message is a plain loop of ``sock.sendall(line)`` over the other members, in the
  sender's greenlet. One member that stops reading stalls the sender, and so the room: that is the point of the
  comparison (geventchat queues per member and drops the slow one).
- ``uvloop-broadcast``: an ``asyncio.Protocol`` on uvloop; ``transport.write(line)`` to each other member (the
  transport buffers without bound: it never stalls, and never drops a slow member either).

Run one: ``python -m benchmarks.broadcast_refs NAME [--port 0] [--cpu N]``; it prints ``NAME listening on HOST:PORT``
once it accepts.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import sys
from collections.abc import Callable

from .refservers import (
    BACKLOG,
    BYE_IDLE,
    DEFAULT_TIMEOUT,
    GREETING,
    MAX_LINE,
    PREFIX,
    ClientIdle,
    IdleTimedProtocol,
    negotiate,
    run_reference,
)

#: The broadcast references by name (the order reports list them in).
NAMES = ("gevent-broadcast", "uvloop-broadcast")

JOIN = b":join "
QUIT = b":q"


def room_name(argument: bytes) -> bytes:
    """The room a ``:join`` argument names: with or without its ``#``, surrounding whitespace ignored."""
    return argument.strip().removeprefix(b"#")


def joined_reply(room: bytes, members: int) -> bytes:
    noun = b"member" if members == 1 else b"members"
    return b"ok: joined #%s (%d %s)\n" % (room, members, noun)


# --------------------------------------------------------------------------------------------- gevent broadcast


def serve_gevent_broadcast(sock: socket.socket, ready: Callable[[], None]) -> None:
    """gevent ``StreamServer``; a room message is ``sendall`` to each other member in turn, in the sender's greenlet."""
    import gevent
    from gevent.server import StreamServer
    from gevent.socket import socket as GeventSocket

    rooms: dict[bytes, dict[GeventSocket, bytes]] = {}
    numbers = itertools.count(1)

    def broadcast(room: bytes, sender: GeventSocket, line: bytes) -> None:
        for member in list(rooms.get(room, {})):
            if member is not sender:
                try:
                    member.sendall(line)
                except OSError:
                    continue  # that member is gone; its own greenlet removes it

    def leave(room: bytes | None, conn: GeventSocket, nick: bytes) -> None:
        if room is None:
            return
        members = rooms.get(room, {})
        members.pop(conn, None)
        if not members:
            rooms.pop(room, None)
        broadcast(room, conn, b"info: %s left #%s\n" % (nick, room))

    def handle(conn: GeventSocket, _address: object) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = conn.makefile("rb")
        nick = b"guest-%d" % next(numbers)
        timeout: float | None = None
        room: bytes | None = None
        try:
            conn.sendall(GREETING)
            while True:
                with gevent.Timeout(timeout or DEFAULT_TIMEOUT, ClientIdle):
                    line = reader.readline(MAX_LINE + 2)
                if not line:
                    return
                text = line.rstrip(b"\r\n")
                if timeout is None:
                    timeout = negotiate(text)
                    continue
                if text.startswith(JOIN):
                    wanted = room_name(text[len(JOIN) :])
                    if wanted != room:
                        leave(room, conn, nick)
                        room = wanted
                        rooms.setdefault(room, {})[conn] = nick
                        broadcast(room, conn, b"info: %s joined #%s\n" % (nick, room))
                    conn.sendall(PREFIX + text + b"\n" + joined_reply(room, len(rooms[room])))
                    continue
                conn.sendall(PREFIX + text + b"\n")
                if text == QUIT:
                    return
                if room is not None:
                    broadcast(room, conn, b"#%s %s: %s\n" % (room, nick, text))
        except ClientIdle:
            conn.sendall(BYE_IDLE)
        except OSError:
            return
        finally:
            leave(room, conn, nick)
            reader.close()

    gsock = GeventSocket(sock.family, sock.type, fileno=sock.detach())
    server = StreamServer(gsock, handle)
    server.start()
    ready()
    server.serve_forever()


# --------------------------------------------------------------------------------------------- uvloop broadcast


class _BroadcastProtocol(IdleTimedProtocol):
    """Callbacks only: split lines, answer, ``transport.write`` the room line to each other member (the idle timer
    is :class:`~benchmarks.refservers.IdleTimedProtocol`'s)."""

    __slots__ = ("nick", "room", "rooms")

    def __init__(self, rooms: dict[bytes, set[_BroadcastProtocol]], nick: bytes) -> None:
        super().__init__()
        self.rooms = rooms
        self.nick = nick
        self.room: bytes | None = None

    def _broadcast(self, line: bytes) -> None:
        assert self.room is not None
        for member in self.rooms[self.room]:
            if member is not self and member.transport is not None:
                member.transport.write(line)

    def _leave(self) -> None:
        if self.room is None:
            return
        self._broadcast(b"info: %s left #%s\n" % (self.nick, self.room))
        members = self.rooms[self.room]
        members.discard(self)
        if not members:
            del self.rooms[self.room]
        self.room = None

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if self._buffer:
            data = self._buffer + data
        *lines, self._buffer = data.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            transport.close()
            return
        for line in lines:
            text = line.rstrip(b"\r")
            if self._timeout is None:
                self._timeout = negotiate(text)
                continue
            if text.startswith(JOIN):
                wanted = room_name(text[len(JOIN) :])
                if wanted != self.room:
                    self._leave()
                    self.room = wanted
                    self.rooms.setdefault(wanted, set()).add(self)
                    self._broadcast(b"info: %s joined #%s\n" % (self.nick, wanted))
                transport.write(PREFIX + text + b"\n" + joined_reply(wanted, len(self.rooms[wanted])))
                continue
            transport.write(PREFIX + text + b"\n")
            if text == QUIT:
                transport.close()
                return
            if self.room is not None:
                self._broadcast(b"#%s %s: %s\n" % (self.room, self.nick, text))
        self._deadline = self._loop.time() + (self._timeout or DEFAULT_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave()
        super().connection_lost(exc)


async def _uvloop_main(sock: socket.socket, ready: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    rooms: dict[bytes, set[_BroadcastProtocol]] = {}
    numbers = itertools.count(1)
    server = await loop.create_server(
        lambda: _BroadcastProtocol(rooms, b"guest-%d" % next(numbers)), sock=sock, backlog=BACKLOG
    )
    ready()
    await server.serve_forever()


# --------------------------------------------------------------------------------------------- entry point


def serve(name: str, sock: socket.socket, ready: Callable[[], None]) -> None:
    """Run broadcast reference ``name`` on the listening ``sock`` until killed; ``ready()`` once it accepts."""
    if name == "gevent-broadcast":
        serve_gevent_broadcast(sock, ready)
    elif name == "uvloop-broadcast":
        import uvloop

        uvloop.run(_uvloop_main(sock, ready))
    else:
        raise ValueError(f"unknown broadcast reference {name!r}; choose from {', '.join(NAMES)}")


def main(argv: list[str] | None = None) -> int:
    return run_reference(
        argv, prog="python -m benchmarks.broadcast_refs", description=__doc__, names=NAMES, serve=serve
    )


if __name__ == "__main__":
    sys.exit(main())
