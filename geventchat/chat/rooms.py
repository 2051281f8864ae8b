"""Where rooms live: the :class:`RoomService` interface, :class:`LocalRooms` (one process, in memory, the default)
and :class:`RoomsOff` (several workers without a broker). No gevent, no sockets, no clock: the gevent shell drives
these objects, and a Redis-backed service can satisfy the same interface later (its methods may block
cooperatively).

Who hears what: the result of a member's own command is *returned* (the shell writes it right after that command's
echo reply, so a client always reads its echo, then its ``ok:``); lines for *other* members go through their
:meth:`Member.deliver` (the shell queues them in that member's :class:`~geventchat.chat.outbox.Outbox`).
"""

from __future__ import annotations

import itertools
from typing import Protocol

from ..protocol.chat import (
    DEFAULT_RELAY_LIMIT,
    HELP,
    INVALID_NICK,
    NOT_IN_A_ROOM,
    ROOMS_OFF,
    TOO_MANY_ROOMS,
    ChatCommand,
    Help,
    InvalidName,
    Join,
    Leave,
    ListRooms,
    Nick,
    PrivateMessage,
    Rejected,
    UsageError,
    Who,
    error_nick_taken,
    error_no_such_nick,
    guest_nick,
    info_joined,
    info_left,
    info_renamed,
    is_reserved,
    name_key,
    ok_joined,
    ok_left,
    ok_rooms,
    ok_sent,
    ok_who,
    ok_you_are,
    private_line,
    room_line,
    too_long_to_relay,
    validate_name,
)
from ..protocol.errors import LocalProtocolError

__all__ = ["DEFAULT_MAX_ROOMS", "LocalRooms", "Member", "RoomService", "RoomsOff", "answer"]

#: ``--max-rooms``: rooms that may exist at once.
DEFAULT_MAX_ROOMS = 10_000


class Member(Protocol):
    """One connected chat client as the room service sees it. Compared and hashed by identity."""

    def deliver(self, line: bytes) -> None:
        """Queue one complete server line for this member; never blocks (the shell's outbox caps it)."""


class RoomService(Protocol):
    """What the connection asks of wherever rooms live. Every method that answers a command returns that one
    ``ok:`` or ``error:`` line; lines for other members go through their :meth:`Member.deliver`. Calling any method
    but :meth:`connect` for a member not connected raises :class:`LocalProtocolError` (the shell's bug)."""

    def connect(self, member: Member) -> str:
        """Admit a member (after the handshake); returns its generated nick ``guest-…``."""
        ...

    def nick(self, member: Member, name: str) -> bytes:
        """``:nick NAME``: ``ok: you are NAME`` or ``error: nick NAME is taken`` or ``error: invalid nick``; the
        others in the member's room get ``info: OLD is now NEW``."""
        ...

    def join(self, member: Member, room: str) -> bytes:
        """``:join ROOM``: ``ok: joined #ROOM (N members)`` or ``error: too many rooms``; leaves the member's room
        first (with its leave notice)."""
        ...

    def leave(self, member: Member) -> bytes:
        """``:leave``: ``ok: left #ROOM`` or ``error: not in a room``."""
        ...

    def who(self, member: Member) -> bytes:
        """``:who``: ``ok: #ROOM N: …`` or ``error: not in a room``."""
        ...

    def list_rooms(self, member: Member) -> bytes:
        """``:rooms``: ``ok: N rooms: #a (3), …``."""
        ...

    def message(self, member: Member, nick: str, text: str) -> bytes:
        """``:msg NICK TEXT``: ``ok: sent to NICK`` (NICK gets ``@SENDER: TEXT``) or ``error: no such nick NICK``,
        or ``error: too long to relay, …`` (sent to no one) when that line would be longer than the relay limit
        (:func:`~geventchat.protocol.chat.too_long_to_relay`). The caller has already applied the rate limit."""
        ...

    def say(self, member: Member, text: str) -> bytes | None:
        """A plain line: ``#ROOM NICK: TEXT`` to every other member of the member's room. Returns ``None`` when
        the echo reply is all the sender gets (also when not in a room), or an ``error:`` line (among them
        ``error: too long to relay, …``: the line went to no one). The caller has already applied the member's
        rate limit."""
        ...

    def part(self, member: Member, reason: str) -> None:
        """The member went (``quit``, ``idle timeout``, ``too slow``, ...): the others in its room get
        ``info: NICK left #ROOM (REASON)`` and its nick is free. No-op for a member not connected (or parted)."""
        ...


def answer(service: RoomService, member: Member, command: ChatCommand | Rejected) -> bytes:
    """The one line that answers a parsed chat command (:func:`~geventchat.protocol.chat.parse_command`)."""
    if isinstance(command, UsageError | InvalidName):
        return command.line()
    if isinstance(command, Help):
        return HELP
    if isinstance(command, Nick):
        return service.nick(member, command.name)
    if isinstance(command, Join):
        return service.join(member, command.room)
    if isinstance(command, Leave):
        return service.leave(member)
    if isinstance(command, Who):
        return service.who(member)
    if isinstance(command, ListRooms):
        return service.list_rooms(member)
    if isinstance(command, PrivateMessage):
        return service.message(member, command.nick, command.text)
    raise LocalProtocolError(f"not a chat command: {command!r}")


class _Room:
    __slots__ = ("members", "name")

    def __init__(self, name: str) -> None:
        self.name = name  # display form: as its first member typed it
        self.members: dict[Member, None] = {}  # insertion-ordered set


class _Seat:
    __slots__ = ("nick", "room")

    def __init__(self, nick: str) -> None:
        self.nick = nick
        self.room: _Room | None = None


class LocalRooms:
    """Rooms of one process, in memory. Nicks are unique by :func:`~geventchat.protocol.chat.name_key`; a member is
    in at most one room; a room exists while it has members and keeps the spelling of the member who opened it.

    Delivery is synchronous and never blocks: :meth:`Member.deliver` only queues. A member parted during a fan-out
    (its outbox overflowed and the shell parted it at once) gets no further lines from that fan-out.
    """

    def __init__(self, max_rooms: int = DEFAULT_MAX_ROOMS, *, max_line: int = DEFAULT_RELAY_LIMIT) -> None:
        if max_rooms < 1 or max_line < 1:
            raise ValueError(f"max_rooms and max_line must be at least 1, not {max_rooms} and {max_line}")
        #: ``--max-rooms``: past it, a ``:join`` that would open a new room gets ``error: too many rooms``.
        self.max_rooms = max_rooms
        #: ``--max-line``: the longest room or private line relayed, in bytes without its newline.
        self.max_line = max_line
        self._seats: dict[Member, _Seat] = {}
        self._nicks: dict[str, Member] = {}
        self._rooms: dict[str, _Room] = {}
        # Generated nicks never collide with chosen ones (``guest-`` is reserved), so a counter is enough here.
        self._guests = itertools.count(1)

    # -- read-only views (for the shell's log and for tests)

    def nick_of(self, member: Member) -> str:
        """The member's nick, display form."""
        return self._seat(member).nick

    def room_of(self, member: Member) -> str | None:
        """The member's room (display form, no ``#``), or ``None``."""
        room = self._seat(member).room
        return None if room is None else room.name

    @property
    def room_count(self) -> int:
        """Rooms that exist (have members)."""
        return len(self._rooms)

    @property
    def member_count(self) -> int:
        """Members connected."""
        return len(self._seats)

    # -- RoomService

    def connect(self, member: Member) -> str:
        if member in self._seats:
            raise LocalProtocolError("connect() called twice for one member")
        nick = guest_nick(str(next(self._guests)))
        self._seats[member] = _Seat(nick)
        self._nicks[name_key(nick)] = member
        return nick

    def nick(self, member: Member, name: str) -> bytes:
        seat = self._seat(member)
        old = seat.nick
        old_key, new_key = name_key(old), name_key(name)
        if validate_name(name) is None or (is_reserved(name) and new_key != old_key):
            return INVALID_NICK
        holder = self._nicks.get(new_key)
        if holder is not None and holder is not member:
            return error_nick_taken(name)
        if name == old:
            return ok_you_are(name)
        del self._nicks[old_key]
        self._nicks[new_key] = member
        seat.nick = name
        if seat.room is not None:
            self._announce(seat.room, member, info_renamed(old, name))
        return ok_you_are(name)

    def join(self, member: Member, room: str) -> bytes:
        seat = self._seat(member)
        if validate_name(room) is None:
            raise LocalProtocolError(f"join() of an invalid room name {room!r}: parse_command() refuses those")
        key = name_key(room)
        current = seat.room
        if current is not None and name_key(current.name) == key:
            return ok_joined(current.name, len(current.members))
        target = self._rooms.get(key)
        if target is None:
            freed = current is not None and len(current.members) == 1
            if len(self._rooms) - freed + 1 > self.max_rooms:
                return TOO_MANY_ROOMS
        if current is not None:
            self._leave_room(member, seat, None)
        if target is None:
            target = self._rooms[key] = _Room(room)
        self._announce(target, member, info_joined(seat.nick, target.name))
        target.members[member] = None
        seat.room = target
        return ok_joined(target.name, len(target.members))

    def leave(self, member: Member) -> bytes:
        seat = self._seat(member)
        room = seat.room
        if room is None:
            return NOT_IN_A_ROOM
        self._leave_room(member, seat, None)
        return ok_left(room.name)

    def who(self, member: Member) -> bytes:
        room = self._seat(member).room
        if room is None:
            return NOT_IN_A_ROOM
        return ok_who(room.name, [self._seats[other].nick for other in room.members])

    def list_rooms(self, member: Member) -> bytes:
        self._seat(member)
        return ok_rooms((room.name, len(room.members)) for room in self._rooms.values())

    def message(self, member: Member, nick: str, text: str) -> bytes:
        line = private_line(self._seat(member).nick, text)
        refusal = too_long_to_relay(line, self.max_line)
        if refusal is not None:
            return refusal
        target = self._nicks.get(name_key(nick))
        if target is None:
            return error_no_such_nick(nick)
        shown = self._seats[target].nick  # before delivering: an overflowing target is parted by deliver()
        target.deliver(line)
        return ok_sent(shown)

    def say(self, member: Member, text: str) -> bytes | None:
        seat = self._seat(member)
        room = seat.room
        if room is None:
            return None
        line = room_line(room.name, seat.nick, text)
        refusal = too_long_to_relay(line, self.max_line)
        if refusal is None:
            self._announce(room, member, line)
        return refusal

    def part(self, member: Member, reason: str) -> None:
        seat = self._seats.get(member)
        if seat is None:
            return
        if seat.room is not None:
            self._leave_room(member, seat, reason)
        del self._seats[member]
        del self._nicks[name_key(seat.nick)]

    # -- internals

    def _seat(self, member: Member) -> _Seat:
        seat = self._seats.get(member)
        if seat is None:
            raise LocalProtocolError("the member is not connected (connect() first, nothing after part())")
        return seat

    def _leave_room(self, member: Member, seat: _Seat, reason: str | None) -> None:
        room = seat.room
        assert room is not None  # the callers checked
        del room.members[member]
        seat.room = None
        if room.members:
            self._announce(room, member, info_left(seat.nick, room.name, reason))
        else:
            del self._rooms[name_key(room.name)]

    @staticmethod
    def _announce(room: _Room, sender: Member, line: bytes) -> None:
        """``line`` to every member of ``room`` but ``sender``. Iterates over a copy because a delivery may make
        the shell part a member (its outbox overflowed), which changes the room."""
        members = room.members
        for other in tuple(members):
            if other is not sender and other in members:
                other.deliver(line)


class RoomsOff:
    """Several workers without ``--redis``: each would have rooms of its own, so every room command answers
    ``error: rooms are off: --workers without --redis`` and plain lines get their echo alone."""

    def __init__(self) -> None:
        self._refusal = ROOMS_OFF
        self._guests = itertools.count(1)

    def connect(self, member: Member) -> str:
        return guest_nick(str(next(self._guests)))

    def nick(self, member: Member, name: str) -> bytes:
        return self._refusal

    def join(self, member: Member, room: str) -> bytes:
        return self._refusal

    def leave(self, member: Member) -> bytes:
        return self._refusal

    def who(self, member: Member) -> bytes:
        return self._refusal

    def list_rooms(self, member: Member) -> bytes:
        return self._refusal

    def message(self, member: Member, nick: str, text: str) -> bytes:
        return self._refusal

    def say(self, member: Member, text: str) -> bytes | None:
        return None

    def part(self, member: Member, reason: str) -> None:
        return None
