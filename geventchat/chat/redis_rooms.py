"""Rooms across workers and hosts: :class:`RedisRooms`, the :class:`~geventchat.chat.rooms.RoomService` every server
of a deployment shares through one Redis (``--redis redis://HOST:PORT/DB``); the server starts and stops it.

Where things live
    Redis holds what every server must agree on: the nick registry, room membership and sizes, each server's
    members, heartbeats (key layout: :mod:`geventchat.chat._redis_scripts`). Every change that touches several keys
    is one Lua script, so it is atomic: two servers cannot take one nick, a room's size always equals its member
    count, and ``--max-rooms`` is checked and used in one step. Each server also keeps its *own* members in memory
    (nick, room): what it delivers to, and what it puts back if Redis restarts empty.

Fan-out: once per server and room, not per member
    A server subscribes to a room's channel ``<prefix>room:<key>`` when its first local member joins (one
    ``SUBSCRIBE`` for any number of joins at once, confirmed before the join goes on) and unsubscribes when its last
    leaves. Every room line is published once, tagged with its sender's member id, and every subscribed server, the
    sender's too, delivers it to its local members but the sender: so each server delivers a room's lines in the one
    order Redis published them. Join and leave notices are published by the JOIN, LEAVE and PART scripts, in the
    same atomic step as the change, and a joining member is delivered the room from its own join notice on (its
    server's listener reads that notice, tagged ``+<member id>``, and adds it there). So a member that got
    ``ok: joined #ROOM (N members)`` hears every line published into the room after it, exactly the joins of
    members not counted in its N, and nothing from before. (Renames are published after the NICK script, not in it.)
    Private messages are published to the owning server's channel ``<prefix>srv:<server id>``. One listener
    greenlet per server reads the subscription connection. Delivery is at most once, live: nothing is stored for a
    member that is not connected, and a line published while a server's subscription is down is lost to it.

Presence
    Each server sets ``alive:<id>`` with a TTL of ``presence_ttl`` and refreshes it every ``presence_ttl / 3``; on
    the same tick it looks for registered servers whose heartbeat expired. For each, one survivor (the one that wins
    ``SET sweep:<id> NX``) frees the dead server's nicks and seats in one script and announces
    ``info: NICK left #ROOM (server lost)`` to each of their rooms. A dead server is announced between
    ``presence_ttl`` and ``presence_ttl * 4 / 3`` after its last heartbeat.

Broker unreachable
    Every method answers ``error: rooms unavailable (broker unreachable)`` instead of raising (``part`` cleans up
    locally and replays the removal in Redis later: by member id, up to ``max_pending_parts`` ids; past that, logged
    once, by comparing the server's member set in Redis with the members it still has). The listener reconnects with
    back-off (0.1 s doubling to 5 s), re-subscribes the rooms its members are in, and puts back what Redis lost if
    it restarted empty: its members' records, nicks (unless another server's member took one meanwhile: then that
    member keeps its nick locally but is not reachable by ``:msg``, and the log says so) and room seats. What does
    not survive a Redis restart: the guest counter (restarts at 1, so a new guest may get a number a connected guest
    still has; the guest keeps it locally, the registry names the newer one) and lines published while the broker
    was down. The log says once that the broker was lost and once that it is back (logger ``geventchat.chat``).

Gevent: redis-py over gevent sockets (:mod:`geventchat.chat._gevent_redis`), no monkey-patching. Methods are called
from connection greenlets and may block cooperatively; each Redis round trip is bounded by ``timeout``.
"""

from __future__ import annotations

import re

from redis.exceptions import RedisError

from ..protocol.chat import (
    INVALID_NICK,
    NOT_IN_A_ROOM,
    ROOMS_LISTED,
    ROOMS_UNAVAILABLE,
    TOO_MANY_ROOMS,
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
from ._redis_backbone import BrokerUnavailable, RedisBackbone, _around_room, _Entry, _Seat, _text
from .rooms import Member

__all__ = ["BrokerUnavailable", "RedisRooms"]

_NOT_NAME = re.compile(r"[^\w-]")


class RedisRooms(RedisBackbone):
    """Rooms shared by every server on one Redis. ``server_id`` must be unique in the deployment (a dead server's
    members are freed by it). :meth:`start` before use; :meth:`stop` to leave cleanly; :meth:`kill` simulates a
    crash (greenlets stop, nothing is cleaned up: the survivors will announce ``server lost``)."""

    def stop(self) -> None:
        """Part every local member still connected (``shutdown``), withdraw this server's heartbeat, then
        :meth:`kill`."""
        for member in list(self._seats):
            self.part(member, "server shutting down")
        try:
            self._redis.delete(self._key(f"alive:{self.server_id}"))
            self._redis.srem(self._key("servers"), self.server_id)
        except RedisError:
            pass  # the broker is gone: the survivors will sweep us after the TTL
        self.kill()

    # -- read-only views

    def nick_of(self, member: Member) -> str:
        """The member's nick, display form."""
        return self._seat(member).nick

    def room_of(self, member: Member) -> str | None:
        """The member's room (display form, no ``#``), or ``None``."""
        seat = self._seat(member)
        return None if seat.room is None else seat.room_name

    @property
    def available(self) -> bool:
        """True while the broker answers."""
        return self._available

    @property
    def room_count(self) -> int:
        """Rooms that exist across the deployment (asks Redis)."""
        return int(self._redis.zcard(self._key("rooms")))

    @property
    def member_count(self) -> int:
        """Members connected to this server."""
        return len(self._seats)

    # -- RoomService

    def connect(self, member: Member) -> str:
        if member in self._seats:
            raise LocalProtocolError("connect() called twice for one member")
        member_id = f"{self.server_id}/{next(self._ids)}"
        try:
            nick = _text(self._call("CONNECT", self.server_id, member_id))
        except BrokerUnavailable:
            # A nick is needed even without the broker: one only this server can make (its id in it), which
            # RESTORE registers once Redis is back.
            nick = guest_nick(f"{_NOT_NAME.sub('-', self.server_id)}-{member_id.rsplit('/', 1)[1]}"[-26:])
        seat = _Seat(member_id, nick)
        self._seats[member] = seat
        self._by_id[member_id] = member
        return nick

    def nick(self, member: Member, name: str) -> bytes:
        seat = self._seat(member)
        old = seat.nick
        new_key = name_key(name)
        if validate_name(name) is None or (is_reserved(name) and new_key != name_key(old)):
            return INVALID_NICK
        try:
            if not self._call("NICK", seat.id, new_key, name):
                return error_nick_taken(name)
        except BrokerUnavailable:
            return ROOMS_UNAVAILABLE
        if name == old:
            return ok_you_are(name)
        seat.nick = name
        if seat.room is not None:
            self._publish(seat.room, seat.id, info_renamed(old, name))
        return ok_you_are(name)

    def join(self, member: Member, room: str) -> bytes:
        seat = self._seat(member)
        if validate_name(room) is None:
            raise LocalProtocolError(f"join() of an invalid room name {room!r}: parse_command() refuses those")
        key = name_key(room)
        old = seat.room
        joined = _around_room(lambda shown: info_joined(seat.nick, shown))
        left = _around_room(lambda shown: info_left(seat.nick, shown))
        if old == key:  # the script answers the count and tells nobody
            try:
                result = self._call("JOIN", seat.id, key, room, self.max_rooms, *joined, *left)
            except BrokerUnavailable:
                return ROOMS_UNAVAILABLE
            return ok_joined(result[1].decode(), int(result[0]))
        if seat.id in self._entering:
            # Its previous join is not seen back yet: the listener takes it first, so that joining this room (or
            # failing to) cannot lose the member's place in that one.
            try:
                self.barrier(self.timeout)
            except BrokerUnavailable:
                return ROOMS_UNAVAILABLE
        # The room's subscription stays from here until the member's join notice comes back through it (or the join
        # fails), even if its last other local member leaves meanwhile.
        self._enter(seat.id, _Entry(member, key, old))
        try:
            # Subscribed (confirmed) before the JOIN script publishes the notice from which the member is delivered
            # the room: every line published after it, so after our ok:, reaches this server.
            self._need_room(key)
            epoch = self._epoch
            result = self._call("JOIN", seat.id, key, room, self.max_rooms, *joined, *left)
        except BrokerUnavailable:
            result = None
        if result is None or result[0] == -1:
            self._abandon(seat.id)  # nothing was published
            self._maybe_unsubscribe(key)
            return ROOMS_UNAVAILABLE if result is None else TOO_MANY_ROOMS
        count, display = int(result[0]), result[1].decode()
        seat.room, seat.room_name = key, display
        entry = self._entering.get(seat.id)
        if entry is not None:
            entry.scripted = True
            if epoch != self._epoch:  # reconnected since: the notice went with the old subscription connection
                self._entered(seat.id, key)
        return ok_joined(display, count)

    def leave(self, member: Member) -> bytes:
        seat = self._seat(member)
        room = seat.room
        if room is None:
            return NOT_IN_A_ROOM
        try:
            self._call("LEAVE", seat.id, *_around_room(lambda shown: info_left(seat.nick, shown)))
        except BrokerUnavailable:
            return ROOMS_UNAVAILABLE
        seat.room = None
        self._abandon_going(member, seat.id)
        self._drop_local(member, room)
        return ok_left(seat.room_name)

    def who(self, member: Member) -> bytes:
        seat = self._seat(member)
        if seat.room is None:
            return NOT_IN_A_ROOM
        try:
            result = self._call("WHO", seat.room)
        except BrokerUnavailable:
            return ROOMS_UNAVAILABLE
        return ok_who(seat.room_name, [nick.decode() for nick in result[1:]])

    def list_rooms(self, member: Member) -> bytes:
        self._seat(member)
        try:
            result = self._call("ROOMS", ROOMS_LISTED)
        except BrokerUnavailable:
            return ROOMS_UNAVAILABLE
        total = int(result[0])
        rooms = [(result[i].decode(), int(result[i + 1])) for i in range(1, len(result), 2)]
        # ok_rooms counts the rooms it is given: the largest and their ties, not every room. Put the real total in
        # its head ("ok: N rooms"); room names cannot contain ":", so the first ":" after the prefix ends the head.
        _, sep, listing = ok_rooms(rooms).removeprefix(b"ok: ").partition(b":")
        head = f"ok: {total} room".encode() + (b"" if total == 1 else b"s")
        return head + (sep + listing if sep else b"\n")

    def message(self, member: Member, nick: str, text: str) -> bytes:
        line = private_line(self._seat(member).nick, text)
        refusal = too_long_to_relay(line, self.max_line)
        if refusal is not None:
            return refusal
        if not self._available:
            return ROOMS_UNAVAILABLE
        try:
            found = self._redis.hget(self._key("nicks"), name_key(nick))
            if found is None:
                return error_no_such_nick(nick)
            target_id = _text(found)
            target = self._by_id.get(target_id)
            if target is not None:
                shown = self._seats[target].nick  # before delivering: an overflowing target is parted by deliver()
                target.deliver(line)
                return ok_sent(shown)
            display = self._redis.hget(self._key(f"m:{target_id}"), "nick")
            owner = target_id.rsplit("/", 1)[0]
            self._redis.publish(self._key(f"srv:{owner}"), target_id.encode() + b" " + line)
        except RedisError as error:
            self._lost(error)
            return ROOMS_UNAVAILABLE
        return ok_sent(nick if display is None else _text(display))

    def say(self, member: Member, text: str) -> bytes | None:
        seat = self._seat(member)
        if seat.room is None:
            return None
        line = room_line(seat.room_name, seat.nick, text)
        refusal = too_long_to_relay(line, self.max_line)
        if refusal is not None:
            return refusal
        if not self._available:
            return ROOMS_UNAVAILABLE
        if not self._publish(seat.room, seat.id, line):
            return ROOMS_UNAVAILABLE
        return None

    def part(self, member: Member, reason: str) -> None:
        seat = self._seats.pop(member, None)
        if seat is None:
            return
        del self._by_id[seat.id]
        self._abandon_going(member, seat.id)
        if seat.room is not None:
            self._drop_local(member, seat.room)
        notice = _around_room(lambda shown: info_left(seat.nick, shown, reason))
        try:
            self._call("PART", self.server_id, seat.id, *notice)
        except BrokerUnavailable:
            self._remember_part(seat.id)  # replayed once the broker is back
            if seat.room is not None:
                # The listener is down with the broker: this server's room-mates hear it from here (the others'
                # servers sweep the member later if the replay does not reach Redis first).
                self._deliver_local(seat.room, member, info_left(seat.nick, seat.room_name, reason))

    # -- test and operations helpers
